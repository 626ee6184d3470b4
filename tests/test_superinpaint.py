"""SuperInpaint / DEAR (seed 22): module invariants, masking, arbitrary scale, repro pieces."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.fields import grid_coords, query_cell, sample_image
from priorlab.nn.superinpaint import (
    DEAR,
    AdaptiveHighPass,
    ConvInpainter,
    LIIFSuperResolver,
    UnmaskAttention,
    masked_input,
    mean_filled,
)
from priorlab.registry import get
from priorlab.reproductions import p022_superinpaint as repro


def _batch(size=6, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 1, size, size, generator=g)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 1:4, 2:5] = 1.0
    return image, mask


def _tiny(**kw):
    """A tiny DEAR whose residual branch is switched on (it starts at zero: see the skip test)."""
    torch.manual_seed(0)
    model = DEAR(1, channels=4, blocks=1, heads=2, hidden=8, depth=1, **kw)
    with torch.no_grad():
        model.decoder.net[-1].weight.normal_(0, 0.5)
    return model


def test_high_pass_starts_as_identity_and_passes_no_constant():
    hp = AdaptiveHighPass(3)
    e = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(hp(e), e)
    with torch.no_grad():
        hp.kernel.copy_(torch.randn(3, 1, 3, 3, generator=torch.Generator().manual_seed(0)))
    # whatever it learns, a constant map has no high frequencies
    torch.testing.assert_close(hp.high_pass(torch.full((1, 3, 4, 4), 2.5)), torch.zeros(1, 3, 4, 4),
                               atol=1e-5, rtol=0)


def test_unmask_attention_ignores_masked_pixels_values():
    torch.manual_seed(0)
    attention = UnmaskAttention(4, heads=2)
    e = torch.randn(1, 4, 3, 3)
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0, :] = 1.0
    changed = e.clone()
    changed[..., 0, :] = torch.randn(1, 4, 3)  # only the embeddings of masked pixels change
    out, out_changed = attention(e, mask), attention(changed, mask)
    # known pixels' outputs move only through masked keys, each down-weighted by 1e-4
    assert (out - out_changed)[..., 1:, :].abs().max() < 1e-2
    # the masked pixels' own outputs do change (their queries moved)
    assert (out - out_changed)[..., 0, :].abs().max() > 1e-2


def test_render_matches_forward_on_the_grid_and_any_scale_works():
    model = _tiny()
    image, mask = _batch()
    coords = grid_coords(12, 12).expand(2, -1, -1)
    by_query = model(image, mask, coords, query_cell(coords, 12, 12))
    rendered = model.render(image, mask, 12, 12)
    torch.testing.assert_close(rendered.flatten(2).transpose(1, 2), by_query)
    for size in (6, 9, 17):  # integer, fractional and odd scales
        assert model.render(image, mask, size, size).shape == (2, 1, size, size)


def test_output_ignores_the_values_under_the_mask():
    model = _tiny()
    image, mask = _batch()
    other = image + mask * torch.rand_like(image)  # change only the missing pixels
    torch.testing.assert_close(model.render(image, mask, 9, 9), model.render(other, mask, 9, 9))
    assert torch.equal(masked_input(image, mask)[:, :1], masked_input(other, mask)[:, :1])


def test_starts_as_the_bicubic_upsampling_of_the_mean_filled_input():
    torch.manual_seed(0)
    model = DEAR(1, channels=4, blocks=1, heads=2, hidden=8, depth=1)  # residual branch at zero
    image, mask = _batch()
    known_mean = (image * (1 - mask)).sum(dim=(-2, -1)) / (1 - mask).sum(dim=(-2, -1))
    torch.testing.assert_close(mean_filled(image, mask)[:, :, 2, 3], known_mean)  # a hole pixel
    filled = mean_filled(image, mask)
    expected = sample_image(filled, grid_coords(12, 12).expand(2, -1, -1), mode="bicubic")
    expected = expected.transpose(1, 2).reshape(2, 1, 12, 12)
    torch.testing.assert_close(model.render(image, mask, 12, 12), expected)


def test_ablations_change_the_output_and_gradients_are_finite():
    image, mask = _batch()
    coords = grid_coords(8, 8).expand(2, -1, -1)
    cell = query_cell(coords, 8, 8)
    full = _tiny()
    out = full(image, mask, coords, cell)
    out.pow(2).mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in full.parameters())
    assert full.attention.query_key.weight.grad.abs().sum() > 0
    assert full.importance.weight.grad.abs().sum() > 0
    plain = _tiny(unmask_attention=False, importance=False)
    plain.load_state_dict(full.state_dict())
    assert not torch.allclose(plain(image, mask, coords, cell), out)
    assert plain.embed(image, mask)[:, 4:].abs().sum() == 0


def test_importance_map_in_unit_interval_and_state_dict_round_trip():
    model = _tiny()
    image, mask = _batch()
    weight = model.importance_map(image, mask)
    assert weight.shape == (2, 1, 6, 6) and ((weight > 0) & (weight < 1)).all()
    copy = _tiny()
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(1.0)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.render(image, mask, 7, 7), model.render(image, mask, 7, 7))


def test_all_masked_image_stays_finite():
    model = _tiny()
    image, _ = _batch()
    out = model.render(image, torch.ones(2, 1, 6, 6), 12, 12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bad", [
    lambda m, x, k: m.render(x, k[:, :, :5], 8, 8),
    lambda m, x, k: m.render(x, k - 0.5, 8, 8),
    lambda m, x, k: m.render(x * float("inf"), k, 8, 8),
    lambda m, x, k: m.render(x.repeat(1, 2, 1, 1), k, 8, 8),
    lambda m, x, k: m.render(x, k, 0, 8),
    lambda m, x, k: DEAR(channels=5, heads=2),
    lambda m, x, k: DEAR(blocks=0),
])
def test_bad_input_raises(bad):
    image, mask = _batch()
    with pytest.raises(PriorlabError):
        bad(_tiny(), image, mask)


def test_baseline_stages_keep_known_pixels_and_upsample():
    torch.manual_seed(0)
    image, mask = _batch()
    inpainter = ConvInpainter(1, channels=4, blocks=1)
    out = inpainter(image, mask)
    torch.testing.assert_close(out * (1 - mask), image * (1 - mask))
    sr = LIIFSuperResolver(1, channels=4, blocks=1, hidden=8, depth=1)
    assert sr.render(image, 15, 15).shape == (2, 1, 15, 15)


def test_card_and_repro_pieces():
    card = get("superinpaint")
    assert card.component is DEAR and card.paper.seed_id == 22
    assert repro.CLAIM.method == "superinpaint" and set(repro.CLAIM.arms) == set(repro.ARMS)
    cfg = dict(repro.CLAIM.tiers["smoke"])
    g = torch.Generator().manual_seed(0)
    masks = repro._boxes(3, 10, cfg, g)
    assert masks.shape == (3, 1, 10, 10) and (masks.flatten(1).sum(1) > 0).all()
    hole = repro._upsample_mask(masks, 20, dilate=2)
    assert (hole >= repro._upsample_mask(masks, 20)).all()
    hr = torch.rand(2, 1, 8, 8)
    assert repro._masked_psnr(hr, hr + 0.1 * torch.ones_like(hr), torch.ones_like(hr)) == \
        pytest.approx(20.0, abs=1e-4)
    # the test set is fixed: the same patches and masks for every arm and seed
    a, b = repro._test_set(cfg), repro._test_set(dict(cfg))
    assert all(torch.equal(x[3], y[3]) for x, y in zip(a, b))


def test_dear_arm_differs_from_the_stacked_arms_at_smoke_size():
    cfg = dict(repro.CLAIM.tiers["smoke"])
    dear = repro.run("dear", cfg, 0).metrics
    stacked = repro.run("inpaint_then_sr", cfg, 0).metrics
    assert dear["psnr"] != stacked["psnr"] and dear["params"] > 0
    with pytest.raises(PriorlabError):
        repro.run("deer", cfg, 0)
