"""Arbitrary-scale LDM + implicit neural decoder (seed 4): shapes, known values, invariants, repro."""

import math

import pytest
import torch

from priorlab import fields
from priorlab.errors import PriorlabError
from priorlab.nn.arbitrary_scale_decoder import (
    ArbitraryScaleDecoder,
    FixedScaleDecoder,
    LatentAutoencoder,
    LatentDenoiser,
    NoiseSchedule,
    alignment_loss,
    denoising_loss,
    sample_queries,
)
from priorlab.methods.arbitrary_scale_ldm import CARD
from priorlab.reproductions import p004_arbitrary_scale_ldm as repro


def _decoder(latent_channels=2, width=8):
    torch.manual_seed(0)
    return ArbitraryScaleDecoder(latent_channels, 1, width=width, liif_hidden=16, liif_depth=2)


def _constant(decoder, value):
    """Make LIIF's MLP output ``value`` everywhere (last layer: zero weights, bias = value)."""
    last = decoder.liif.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)
    return decoder


def test_autoencoder_shapes_and_fixed_scale_only():
    ae = LatentAutoencoder(1, latent_channels=3, width=8, factor=2)
    x = torch.rand(2, 1, 8, 8)
    z = ae.encode(x)
    assert z.shape == (2, 3, 4, 4) and ae(x).shape == x.shape
    assert FixedScaleDecoder(3, 1, width=8, scale=3)(z).shape == (2, 1, 12, 12)


def test_from_fixed_keeps_the_decoder_layers_and_drops_the_upscaling():
    fixed = LatentAutoencoder(1, latent_channels=3, width=8).decoder
    decoder = ArbitraryScaleDecoder.from_fixed(fixed, liif_hidden=16, liif_depth=2)
    z = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(decoder.body(z), fixed.body(z))
    for a, b in zip(decoder.refine.parameters(), fixed.refine.parameters()):
        assert torch.equal(a, b)
    # the features stay at the latent's resolution: no up-scaling inside D_phi
    assert decoder.features(z).shape == (2, 8, 4, 4)
    # a copy, not a view: training the new decoder leaves the fixed one alone
    with torch.no_grad():
        next(decoder.body.parameters()).add_(1.0)
    assert not torch.equal(next(decoder.body.parameters()), next(fixed.body.parameters()))


def test_render_any_size_matches_pointwise_queries():
    decoder = _decoder()
    z = torch.randn(2, 2, 3, 3)
    for size in (2, 5, 7, 11):
        image = decoder.render(z, size, size)
        assert image.shape == (2, 1, size, size) and torch.isfinite(image).all()
    coords = fields.grid_coords(7, 7).unsqueeze(0).expand(2, -1, -1)
    values = decoder(z, coords, fields.query_cell(coords, 7, 7))
    torch.testing.assert_close(values.transpose(1, 2).reshape(2, 1, 7, 7), decoder.render(z, 7, 7))


def test_sample_queries_returns_the_pixels_it_names():
    targets = torch.rand(3, 2, 5, 4)
    coords, cell, values = sample_queries(targets)
    assert coords.shape == (3, 20, 2) and values.shape == (3, 20, 2)
    torch.testing.assert_close(values, targets.flatten(2).transpose(1, 2))
    torch.testing.assert_close(cell[0, 0], torch.tensor([2 / 5, 2 / 4]))
    coords, _, values = sample_queries(targets, 7, torch.Generator().manual_seed(0))
    assert coords.shape == (3, 7, 2)
    assert all(len(set(map(tuple, c.tolist()))) == 7 for c in coords)  # without replacement
    torch.testing.assert_close(values, fields.sample_image(targets, coords, mode="nearest"))


def test_alignment_loss_known_value_and_weights():
    decoder = _constant(_decoder(), 0.25).requires_grad_(False)
    latents = torch.randn(2, 2, 3, 3)
    targets = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    # |0.25 - 0| = 0.25 and |0.25 - 1| = 0.75
    assert float(alignment_loss(decoder, latents, targets)) == pytest.approx(0.5, abs=1e-6)
    weighted = alignment_loss(decoder, latents, targets, weights=torch.tensor([1.0, 0.0]))
    assert float(weighted) == pytest.approx(0.125, abs=1e-6)
    sampled = alignment_loss(decoder, latents, targets, n_queries=5,
                             generator=torch.Generator().manual_seed(1))
    assert float(sampled) == pytest.approx(0.5, abs=1e-6)


def test_alignment_through_a_frozen_decoder_moves_only_the_latents():
    decoder = _decoder().requires_grad_(False)
    latents = torch.randn(2, 2, 3, 3, requires_grad=True)
    loss = alignment_loss(decoder, latents, torch.rand(2, 1, 6, 6))
    loss.backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in decoder.parameters())


def test_noise_schedule_and_oracle_ddim_recovers_the_latent():
    schedule = NoiseSchedule(50)
    abar = schedule.alpha_bar
    assert (abar.diff() < 0).all() and 0 < float(abar[-1]) < 1e-3 and float(abar[0]) < 1
    z0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 20, 49])
    torch.testing.assert_close(schedule.predict_z0(schedule.noise(z0, t, eps), t, eps), z0,
                               rtol=1e-4, atol=1e-4)

    class Oracle(torch.nn.Module):
        latent_channels = 2

        def forward(self, zt, t, cond):
            a = schedule.abar(t)
            return (zt - a.sqrt() * z0) / (1 - a).sqrt()

    sample = schedule.sample(Oracle(), torch.zeros(3, 1, 4, 4), n_steps=10,
                             generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, z0, rtol=1e-4, atol=1e-4)


def test_denoiser_uses_time_and_condition_and_the_loss_is_finite():
    torch.manual_seed(0)
    denoiser = LatentDenoiser(2, cond_channels=1, width=8, depth=2)
    zt, cond = torch.randn(2, 2, 3, 3), torch.rand(2, 1, 3, 3)
    base = denoiser(zt, torch.tensor([0, 0]), cond)
    assert base.shape == zt.shape
    assert not torch.allclose(base, denoiser(zt, torch.tensor([40, 40]), cond))
    assert not torch.allclose(base, denoiser(zt, torch.tensor([0, 0]), cond + 1))
    loss, z0_hat, abar = denoising_loss(denoiser, NoiseSchedule(50), torch.randn(2, 2, 3, 3), cond,
                                        torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and z0_hat.shape == (2, 2, 3, 3) and abar.shape == (2,)
    assert all(torch.isfinite(p.grad).all() for p in denoiser.parameters())


@pytest.mark.parametrize("bad", [
    lambda: ArbitraryScaleDecoder(2, 1, width=0),
    lambda: ArbitraryScaleDecoder.from_fixed(torch.nn.Conv2d(1, 1, 1)),
    lambda: FixedScaleDecoder(2, scale=0),
    lambda: LatentAutoencoder(factor=2).encode(torch.rand(1, 2, 8, 8)),
    lambda: LatentDenoiser(2, cond_channels=0)(torch.randn(1, 2, 3, 3), torch.tensor([0.5])),
    lambda: NoiseSchedule(10).sample(LatentDenoiser(2, 1), torch.zeros(1, 1, 3, 3), n_steps=11),
    lambda: sample_queries(torch.rand(2, 5, 5)),
    lambda: alignment_loss(_decoder(), torch.randn(2, 2, 3, 3), torch.rand(2, 1, 4, 4),
                           weights=torch.ones(3)),
    lambda: repro.run("implicitt", repro.CLAIM.tiers["smoke"], 0),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_claim_covers_every_clause_and_card_links_it():
    claim = repro.CLAIM
    named = {c.clause for c in claim.comparisons} | {g.clause for g in claim.guards}
    assert set(claim.clauses) == named | {u.clause for u in claim.untested}
    assert CARD.id == claim.method and CARD.reproduction == "p004_arbitrary_scale_ldm"
    full = claim.tiers["full"]
    unseen = set(full["between_sizes"] + full["beyond_sizes"])
    assert not unseen & set(full["train_sizes"]) and max(unseen) == full["native"]
    train = full["train_sizes"]
    assert min(train) < min(full["between_sizes"]) < max(train) < min(full["beyond_sizes"])


def test_smoke_runs_the_implicit_decoder_and_the_bicubic_baseline_differently():
    cfg = repro.CLAIM.tiers["smoke"]
    implicit, bicubic = repro.run("implicit", cfg, 0), repro.run("bicubic", cfg, 0)
    for out in (implicit, bicubic):
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert len(out.info["output_image"]) == 2 * cfg["native"]
    assert implicit.metrics["psnr_unseen"] != bicubic.metrics["psnr_unseen"]
    # same autoencoder: the AE's own reconstruction is shared across arms
    assert implicit.metrics["ae_psnr"] == bicubic.metrics["ae_psnr"]
