"""GIFD (seed 52): l1-ball projection, gradient matching, defences, the three attacks, repro."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.generative import Generator
from priorlab.generative.inversion import (
    defend_gradients,
    gradient_matching_loss,
    invert_features,
    invert_latent,
    invert_pixels,
    project_l1_ball,
    shared_gradients,
    total_variation,
)
from priorlab.models import SmallCNN
from priorlab.registry import get
from priorlab.reproductions import p052_gifd


def _setup(n=2):
    torch.manual_seed(0)
    model = SmallCNN(10, channels=4, image_size=16).eval()
    images = torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(n)
    generator = Generator(latent_dim=8, channels=4, image_size=16).eval()
    return model, images, labels, generator


def test_project_l1_ball_known_values():
    x = torch.tensor([[3.0, 1.0], [1.0, -1.0], [0.2, 0.1]])
    out = project_l1_ball(x, torch.tensor([2.0, 1.0, 1.0]))
    # [3, 1] -> threshold 1 -> [2, 0]; [1, -1] -> threshold 0.5; the third row is inside
    assert torch.allclose(out, torch.tensor([[2.0, 0.0], [0.5, -0.5], [0.2, 0.1]]))
    assert torch.equal(project_l1_ball(x, 0.0), torch.zeros_like(x))


def test_project_l1_ball_is_the_nearest_point():
    x = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    radius = torch.full((5,), 2.0, dtype=torch.float64)
    out = project_l1_ball(x, radius)
    assert torch.allclose(out.flatten(1).abs().sum(1), radius)
    # no random point of the ball is closer to x than the projection
    candidates = project_l1_ball(torch.randn(200, 12, dtype=torch.float64), 2.0)
    for i in range(5):
        best = (out[i].flatten() - x[i].flatten()).norm()
        assert ((candidates - x[i].flatten()).norm(dim=1) >= best - 1e-9).all()


def test_gradient_matching_loss_values():
    model, images, labels, _ = _setup()
    target = shared_gradients(model, images, labels)
    assert gradient_matching_loss(model, images, labels, target).item() == pytest.approx(0, abs=1e-6)
    scaled = [5 * t for t in target]  # cosine: invariant to the target's scale
    assert gradient_matching_loss(model, images, labels, scaled).item() == pytest.approx(0, abs=1e-6)
    flipped = [-t for t in target]
    assert gradient_matching_loss(model, images, labels, flipped).item() == pytest.approx(2, abs=1e-5)


def test_total_variation_known_value():
    x = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    assert total_variation(x).item() == pytest.approx(1.0)  # 0 vertically, 1 horizontally


def test_defences():
    grads = [torch.arange(10.0) - 4.5, torch.ones(2, 2)]
    same = defend_gradients(grads)
    assert all(torch.equal(a, b) for a, b in zip(same, grads))
    pruned = defend_gradients(grads, prune_ratio=0.6)
    assert (pruned[0] == 0).sum() == 6 and pruned[0][0] == -4.5 and pruned[0][-1] == 4.5
    noisy = defend_gradients(grads, noise_std=0.1, rng=torch.Generator().manual_seed(0))
    again = defend_gradients(grads, noise_std=0.1, rng=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], again[0]) and not torch.equal(noisy[0], grads[0])


def test_attacks_lower_the_matching_loss_and_gifd_keeps_the_best_stage():
    model, images, labels, generator = _setup()
    target = shared_gradients(model, images, labels)
    start = gradient_matching_loss(model, torch.rand(2, 1, 16, 16), labels, target).item()
    pixels = invert_pixels(model, target, labels, (1, 16, 16), steps=30)
    assert pixels.loss < start and pixels.images.min() >= 0 and pixels.images.max() <= 1
    latent = invert_latent(model, target, labels, generator, steps=10)
    gifd = invert_features(model, target, labels, generator, latent_steps=10, layer_steps=5)
    assert set(gifd.stage_losses) == {"latent", "feature 1", "feature 2", "feature 3"}
    assert gifd.loss == pytest.approx(min(gifd.stage_losses.values()))
    # the latent stage is GI with the same seed and steps
    assert gifd.stage_losses["latent"] == pytest.approx(latent.loss)
    assert torch.isfinite(gifd.images).all() and gifd.images.shape == images.shape


def test_zero_radii_keep_the_latent_result():
    model, images, labels, generator = _setup()
    target = shared_gradients(model, images, labels)
    latent = invert_latent(model, target, labels, generator, steps=8)
    gifd = invert_features(model, target, labels, generator, latent_steps=8, layer_steps=4,
                           radii=(0.0, 0.0))
    assert gifd.stage_losses["feature 1"] == pytest.approx(latent.loss, abs=1e-5)
    assert gifd.stage_losses["feature 2"] == pytest.approx(latent.loss, abs=1e-5)
    assert torch.allclose(gifd.images, latent.images, atol=1e-5)


def test_bad_inputs():
    model, images, labels, generator = _setup()
    target = shared_gradients(model, images, labels)
    with pytest.raises(PriorlabError):
        invert_features(model, target, labels, torch.nn.Linear(8, 256))
    with pytest.raises(PriorlabError):
        invert_features(model, target, labels, generator, radii=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(PriorlabError):
        invert_features(model, target, labels, generator, radii=(-1.0,))
    with pytest.raises(PriorlabError):
        invert_features(model, target, labels, generator, layer_steps=[3, 3], radii=(1.0,))
    with pytest.raises(PriorlabError):
        invert_pixels(model, target, labels.float(), (1, 16, 16))
    with pytest.raises(PriorlabError):
        invert_latent(model, target, labels, generator, lr=0.0)
    with pytest.raises(PriorlabError):
        gradient_matching_loss(model, images, labels, target[:-1])
    with pytest.raises(PriorlabError):
        defend_gradients(target, prune_ratio=1.0)
    with pytest.raises(PriorlabError):
        shared_gradients(model, images.squeeze(1), labels)
    with pytest.raises(PriorlabError):
        project_l1_ball(torch.ones(2, 3), float("nan"))


def test_card_and_reproduction_smoke():
    assert get("gifd").paper.seed_id == 52
    cfg = p052_gifd.CLAIM.tiers["smoke"]
    gifd = p052_gifd.run("gifd", cfg, 0)
    pixels = p052_gifd.run("ig", cfg, 0)
    assert gifd.metrics["psnr"] != pixels.metrics["psnr"]
    assert gifd.info["stage"] in ("latent", "feature 1", "feature 2", "feature 3")
    assert p052_gifd.run("gi_pruned", cfg, 0).info["prune_ratio"] == cfg["prune_ratio"]
    with pytest.raises(PriorlabError, match="gifd"):
        p052_gifd.run("gifd_prunned", cfg, 0)
