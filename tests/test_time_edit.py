"""TIME (paper 61): the closed form, token alignment, and the edit on a diffusers UNet."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.time_edit import (
    align_tokens,
    closed_form_edit,
    cross_attention_layers,
    time_edit,
    undo_edit,
)

diffusers = pytest.importorskip("diffusers")


def _unet(text_dim=16):
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_dim,
        attention_head_dim=8, norm_num_groups=8)


def test_closed_form_matches_a_direct_least_squares_solve():
    torch.manual_seed(0)
    w0, c, v, lam = torch.randn(5, 7), torch.randn(12, 7), torch.randn(12, 5), 0.1
    # min_W sum |W c_i - v_i|^2 + lam |W - W0|^2  ==  lstsq of [C; sqrt(lam) I] W^T = [V; sqrt(lam) W0^T]
    a = torch.cat([c, lam ** 0.5 * torch.eye(7)]).double()
    b = torch.cat([v, lam ** 0.5 * w0.T]).double()
    expected = torch.linalg.lstsq(a, b).solution.T
    assert torch.allclose(closed_form_edit(w0, c, v, lam).double(), expected, atol=1e-5)


def test_closed_form_fixed_points():
    torch.manual_seed(1)
    w0, c = torch.randn(4, 6), torch.randn(3, 6)
    # targets already met: nothing changes
    assert torch.allclose(closed_form_edit(w0, c, c @ w0.T, 0.1), w0, atol=1e-5)
    # a huge lam keeps W0; a tiny lam meets the targets exactly (fewer constraints than inputs)
    v = torch.randn(3, 4)
    assert torch.allclose(closed_form_edit(w0, c, v, 1e8), w0, atol=1e-4)
    assert torch.allclose(c @ closed_form_edit(w0, c, v, 1e-6).T, v, atol=1e-3)


def test_align_tokens_follows_the_official_rule():
    # [CLS] a pack of roses [SEP] pad pad  ->  [CLS] a pack of blue roses [SEP] pad
    source = [101, 1, 2, 3, 4, 102, 0, 0]
    dest = [101, 1, 2, 3, 9, 4, 102, 0]
    assert align_tokens(source, dest) == [0, 1, 2, 3, 5, 6, 7, 7]
    assert align_tokens(source, source) == list(range(8))


def test_edit_changes_only_cross_attention_kv_and_maps_source_to_destination():
    unet = _unet()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.manual_seed(2)
    source, dest = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    originals = time_edit(unet, source, dest, [list(range(5))], lam=1e-4)
    changed = {k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(originals) and changed
    assert all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)
    for name, module in cross_attention_layers(unet):
        w0 = originals[f"{name}.to_v.weight"]
        assert torch.allclose(module.to_v(source[0]), dest[0] @ w0.T, atol=1e-2)
    undo_edit(unet, originals)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())


def test_values_only_and_identity_edit():
    unet = _unet()
    states = torch.randn(2, 4, 16)
    originals = time_edit(unet, states, states, [list(range(4))] * 2, edit_keys=False)
    assert all(k.endswith("to_v.weight") for k in originals)
    params = dict(unet.named_parameters())
    assert all(torch.allclose(params[k], w, atol=1e-5) for k, w in originals.items())


def test_the_edit_changes_the_unet_output_for_the_source_prompt():
    unet = _unet().eval()
    torch.manual_seed(3)
    source, dest = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([500])
    with torch.no_grad():
        out_dest = unet(x, t, encoder_hidden_states=dest).sample
        out_before = unet(x, t, encoder_hidden_states=source).sample
        time_edit(unet, source, dest, [list(range(5))], lam=1e-4)
        out_after = unet(x, t, encoder_hidden_states=source).sample
    assert (out_after - out_dest).norm() < 0.05 * (out_before - out_dest).norm()


@pytest.mark.parametrize("bad", [
    lambda: closed_form_edit(torch.randn(3, 4), torch.randn(2, 4), torch.randn(2, 3), lam=0.0),
    lambda: closed_form_edit(torch.randn(3, 4), torch.randn(2, 4), torch.randn(2, 3), lam=float("nan")),
    lambda: closed_form_edit(torch.randn(3, 4), torch.randn(2, 5), torch.randn(2, 3)),
    lambda: closed_form_edit(torch.randn(3, 4), torch.full((2, 4), float("nan")), torch.randn(2, 3)),
    lambda: time_edit(_unet(), torch.randn(1, 4, 16), torch.randn(2, 4, 16), [[0, 1, 2, 3]]),
    lambda: time_edit(_unet(), torch.randn(1, 4, 16), torch.randn(1, 4, 16), [[0, 1, 2, 9]]),
    lambda: time_edit(_unet(), torch.randn(1, 4, 16), torch.randn(1, 4, 16), [[0, 1]]),
    lambda: time_edit(_unet(), torch.randn(1, 4, 8), torch.randn(1, 4, 8), [[0, 1, 2, 3]]),
    lambda: time_edit(torch.nn.Linear(3, 3), torch.randn(1, 4, 3), torch.randn(1, 4, 3), [[0, 1, 2, 3]]),
    lambda: undo_edit(_unet(), {"nope.weight": torch.zeros(1)}),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()
