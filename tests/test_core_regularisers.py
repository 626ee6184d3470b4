"""CoRe's context regularisers (paper 14): known values, invariants, the attention capture on a
tiny diffusers UNet, bad input."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.core_regularisers import (
    attention_token_means,
    capture_cross_attention,
    context_attention_loss,
    context_embedding_loss,
    core_losses,
    cross_attention_modules,
    rescale_embedding,
)
from priorlab.generative.diffusion import tiny_unet


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(channels=(8, 16), head_dim=4, seed=0)


def _inputs(n=2, tokens=6, dim=384, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.tensor([10, 700][:n]),
            torch.randn(n, tokens, dim, generator=g))


def test_embedding_loss_known_values_and_the_concept_token_is_ignored():
    ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    same = ref.clone()
    mask = torch.tensor([[True, False, True]])  # token 1 is S*
    assert context_embedding_loss(same, ref, mask).item() == pytest.approx(0, abs=1e-6)
    same[0, 1] = torch.tensor([-5.0, 3.0])  # only S* changes: no loss (Eq. 3 skips i = k)
    assert context_embedding_loss(same, ref, mask).item() == pytest.approx(0, abs=1e-6)
    states = torch.tensor([[[0.0, 1.0], [9.0, 9.0], [2.0, 2.0]]])  # token 0 orthogonal, token 2 parallel
    assert context_embedding_loss(states, ref, mask).item() == pytest.approx(0.5)
    # per prompt over its own context tokens, then over prompts
    both = torch.tensor([[True, False, True], [True, True, True]])
    loss = context_embedding_loss(torch.cat([states, ref]), torch.cat([ref, ref]), both)
    assert loss.item() == pytest.approx(0.25)


def test_attention_means_and_loss_known_values():
    a = torch.zeros(1, 2, 4, 3)
    a[..., 0] = 1.0  # every pixel of every head reads token 0
    b = torch.full((1, 1, 16, 3), 1 / 3)  # a second layer (another size), uniform
    means = attention_token_means([a, b])
    assert torch.allclose(means, torch.tensor([[(1 + 1 / 3) / 2, 1 / 6, 1 / 6]]))
    mask = torch.tensor([[True, True, False]])
    assert context_attention_loss([a, b], [a, b], mask) == 0
    uniform = torch.full((1, 2, 4, 3), 1 / 3)
    # layer 1 uniform in both: mean differences (1/3 - 2/3 ... ) only from the first layer, halved
    expected = ((means[0, 0] - 1 / 3) ** 2 + (means[0, 1] - 1 / 3) ** 2) / 2
    assert context_attention_loss([a, b], [uniform, b], mask).item() == pytest.approx(expected.item())


def test_capture_records_every_cross_attention_without_changing_the_output(unet):
    noisy, t, states = _inputs()
    with torch.no_grad():
        plain = unet(noisy, t, encoder_hidden_states=states).sample
        originals = [m.processor for _, m in cross_attention_modules(unet)]
        with capture_cross_attention(unet) as maps:
            recorded = unet(noisy, t, encoder_hidden_states=states).sample
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert len(maps) == len(originals) == 4  # one down block, the middle, one up block (2 layers)
    for m in maps:
        assert m.shape[0] == 2 and m.shape[-1] == 6
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:-1]), atol=1e-5)  # probabilities
    assert [m.processor for _, m in cross_attention_modules(unet)] == originals  # restored


def test_capture_restores_processors_after_an_error(unet):
    originals = [m.processor for _, m in cross_attention_modules(unet)]
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(unet):
            raise RuntimeError("boom")
    assert [m.processor for _, m in cross_attention_modules(unet)] == originals


def test_core_losses_reach_only_the_concept_states_and_vanish_for_the_reference(unet):
    noisy, t, reference = _inputs(tokens=5)
    mask = torch.tensor([[True, True, False, True, True]] * 2)
    zero = core_losses(unet, noisy, t, reference.clone(), reference, mask)
    assert zero["embedding"].item() == pytest.approx(0, abs=1e-6)
    assert zero["attention"].item() == pytest.approx(0, abs=1e-12)
    states = reference.clone()
    states[:, 2] += 3.0  # move S*'s state only: its attention share changes the others' share
    states.requires_grad_(True)
    losses = core_losses(unet, noisy, t, states, reference, mask)
    assert losses["embedding"].item() == pytest.approx(0, abs=1e-6)
    assert losses["attention"].item() > 0
    losses["attention"].backward()
    assert torch.isfinite(states.grad).all() and states.grad[:, 2].abs().sum() > 0


def test_rescale_embedding_keeps_direction_and_sets_norm():
    v = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    rescale_embedding(v, torch.tensor([[10.0], [1.0]]))
    assert torch.allclose(v, torch.tensor([[6.0, 8.0], [0.0, 1.0]]))
    w = torch.tensor([1.0, 1.0])
    rescale_embedding(w, 1.0)
    assert torch.allclose(w, torch.full((2,), 1 / math.sqrt(2)))


def test_bad_input_is_refused(unet):
    s = torch.randn(2, 4, 8)
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(PriorlabError, match="reference_states"):
        context_embedding_loss(s, torch.randn(2, 5, 8), mask)
    with pytest.raises(PriorlabError, match="context_mask"):
        context_embedding_loss(s, s, mask.float())
    with pytest.raises(PriorlabError, match="at least one context token"):
        context_embedding_loss(s, s, torch.tensor([[True] * 4, [False] * 4]))
    bad = s.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(PriorlabError, match="NaN"):
        context_embedding_loss(bad, s, mask)
    with pytest.raises(PriorlabError, match="non-empty list"):
        attention_token_means([])
    with pytest.raises(PriorlabError, match="non-empty list"):
        attention_token_means(torch.rand(1, 2, 4, 3))
    with pytest.raises(PriorlabError, match="maps\\[1\\]"):
        attention_token_means([torch.rand(1, 2, 4, 3), torch.rand(1, 2, 4, 5)])
    with pytest.raises(PriorlabError, match="same UNet"):
        context_attention_loss([torch.rand(1, 2, 4, 3)], [torch.rand(2, 2, 4, 3)],
                               torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(PriorlabError, match="norm must be positive"):
        rescale_embedding(torch.ones(3), 0.0)
    with pytest.raises(PriorlabError, match="UNet2DConditionModel"):
        with capture_cross_attention(torch.nn.Linear(2, 2)):
            pass
    noisy, t, states = _inputs()
    with pytest.raises(PriorlabError, match="states"):
        core_losses(unet, noisy, t, states[:1], states, torch.ones(2, 6, dtype=bool))


def test_core_inversion_is_textual_inversion_without_regularisers_and_differs_with_them(unet):
    from priorlab.generative.personalize import concept_images, textual_inversion, word_embedding
    from priorlab.reproductions.p014_core import core_inversion
    images = concept_images(9, 4, seed=0)
    common = {"steps": 3, "batch_size": 2, "lr": 0.05, "seed": 1}
    plain, _ = textual_inversion(unet, images, **common)
    same, curves = core_inversion(unet, images, embedding_weight=0, attention_weight=0,
                                  rescale_window=(0, 0), **common)
    assert torch.equal(plain, same) and curves["attention"] == []
    core, curves = core_inversion(unet, images, embedding_weight=1.0, attention_weight=10.0,
                                  rescale_window=(0, 1), **common)
    assert len(curves["embedding"]) == len(curves["attention"]) == 3
    assert all(math.isfinite(v) for v in curves["embedding"] + curves["attention"])
    assert not torch.allclose(core, plain)
    # rescaling at every step keeps the initial (super-category) norm, Eq. 6
    assert core.norm().item() == pytest.approx(word_embedding("digit").norm().item(), rel=1e-5)
