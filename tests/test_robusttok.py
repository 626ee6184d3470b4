"""RobustTok's latent perturbation and perturbed-token score (paper 50)."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.tokenizer_regularisers import (
    latent_perturbation,
    perturb_tokens,
    perturbation_ratio,
)
from priorlab.generative.tokenizer import VQTokenizer, vq_loss


def _setup(n=6, k=10, d=4):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(n, d, 4, 4, generator=g)
    codebook = torch.randn(k, d, generator=g)
    return latents, codebook


def _nearest(latents, codebook):
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    return codebook[torch.cdist(flat, codebook).argmin(1)].reshape(
        latents.shape[0], 4, 4, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"alpha": 0.0, "beta": 1.0}, {"delta": 1, "beta": 1.0}])
def test_no_perturbation_is_nearest_code_quantisation(kwargs):
    latents, codebook = _setup()
    out = latent_perturbation(latents, codebook, **{"alpha": 1.0, "delta": 5, **kwargs})
    torch.testing.assert_close(out, _nearest(latents, codebook))


def test_only_the_first_beta_share_is_perturbed_within_delta_nearest():
    latents, codebook = _setup(n=10, k=10)
    out = latent_perturbation(latents, codebook, alpha=1.0, beta=0.3, delta=3,
                              generator=torch.Generator().manual_seed(1))
    nearest = _nearest(latents, codebook)
    torch.testing.assert_close(out[3:], nearest[3:])
    assert not torch.allclose(out[:3], nearest[:3])
    flat = latents[:3].permute(0, 2, 3, 1).reshape(-1, 4)
    chosen = out[:3].permute(0, 2, 3, 1).reshape(-1, 4)
    top3 = torch.cdist(flat, codebook).topk(3, largest=False).indices
    ids = torch.cdist(chosen, codebook).argmin(1)
    assert (ids[:, None] == top3).any(1).all()


def test_straight_through_gradient_is_identity():
    latents, codebook = _setup()
    latents.requires_grad_(True)
    latent_perturbation(latents, codebook, beta=1.0, delta=3).sum().backward()
    torch.testing.assert_close(latents.grad, torch.ones_like(latents))


def test_perturb_tokens():
    _, codebook = _setup(k=10)
    tokens = torch.randint(10, (5, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(perturb_tokens(tokens, codebook, rate=0.0, delta=4), tokens)
    assert torch.equal(perturb_tokens(tokens, codebook, rate=1.0, delta=1), tokens)  # nearest = itself
    moved = perturb_tokens(tokens, codebook, rate=1.0, delta=10, generator=torch.Generator().manual_seed(0))
    assert moved.shape == tokens.shape and 0.6 < (moved != tokens).float().mean() < 1.0
    near = perturb_tokens(tokens, codebook, rate=1.0, delta=2, generator=torch.Generator().manual_seed(0))
    second = torch.cdist(codebook, codebook).topk(2, largest=False).indices[:, 1]
    assert ((near == tokens) | (near == second[tokens])).all()


def test_annealing_ratio():
    assert perturbation_ratio(0.0) == 1.0 and perturbation_ratio(0.2) == 1.0
    assert perturbation_ratio(0.4) == pytest.approx(0.75)
    assert perturbation_ratio(0.6) == 0.5 and perturbation_ratio(1.0) == 0.5
    with pytest.raises(PriorlabError):
        perturbation_ratio(1.5)


def test_perturbed_loss_differs_only_through_the_decoder_input():
    torch.manual_seed(0)
    tok = VQTokenizer(width=4, codebook_size=8, code_dim=4)
    images = torch.rand(8, 1, 16, 16)
    plain, p_parts = vq_loss(tok, images)
    perturbed, q_parts = vq_loss(tok, images, perturbation={"alpha": 1.0, "beta": 1.0, "delta": 8},
                                 generator=torch.Generator().manual_seed(0))
    assert p_parts["codebook"] == q_parts["codebook"] and p_parts["commit"] == q_parts["commit"]
    assert q_parts["recon"] != p_parts["recon"]


def test_bad_arguments():
    latents, codebook = _setup()
    for kwargs in ({"alpha": 1.5}, {"beta": -0.1}, {"delta": 0}, {"delta": 11}):
        with pytest.raises(PriorlabError):
            latent_perturbation(latents, codebook, **kwargs)
    with pytest.raises(PriorlabError):
        latent_perturbation(latents[:, :3], codebook)
    with pytest.raises(PriorlabError):
        latent_perturbation(latents * float("nan"), codebook)
    with pytest.raises(PriorlabError, match="token ids"):
        perturb_tokens(torch.tensor([0, 10]), codebook, rate=0.5, delta=2)


def test_perturbations_reject_a_non_finite_or_half_codebook():
    # fuzz findings: a NaN code reached the quantised latents; a float16 codebook crashed in
    # torch.cdist without naming the argument
    latents, codebook = torch.randn(2, 3, 2, 2), torch.randn(6, 3)
    bad = codebook.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(PriorlabError, match="codebook"):
        latent_perturbation(latents, bad, delta=3)
    with pytest.raises(PriorlabError, match="codebook"):
        latent_perturbation(latents, codebook.double(), delta=3)
    with pytest.raises(PriorlabError, match="latents"):
        latent_perturbation(latents.half(), codebook.half(), delta=3)
    with pytest.raises(PriorlabError, match="codebook"):
        perturb_tokens(torch.tensor([0, 1]), codebook.half(), rate=0.5, delta=3)
    with pytest.raises(PriorlabError, match="codebook"):
        perturb_tokens(torch.tensor([0, 1]), bad, rate=0.5, delta=3)
