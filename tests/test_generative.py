"""The small DCGAN and its classifier-based scores (priorlab.generative)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from priorlab.errors import PriorlabError
from priorlab.generative import gan
from priorlab.generative.evaluate import (
    DigitClassifier,
    class_rates,
    classifier_frechet_distance,
    frechet_distance,
    train_classifier,
)
from priorlab.generative.gan import (
    Discriminator,
    Generator,
    adversarial_training,
    digit_images,
    discriminator_loss,
    generator_loss,
    pretrained_gan,
)


@pytest.mark.parametrize("size", [16, 28])
def test_generator_makes_images_in_unit_range_and_discriminator_scores_them(size):
    torch.manual_seed(0)
    g, d = Generator(latent_dim=8, channels=4, image_size=size), Discriminator(channels=4, image_size=size)
    images = g(torch.randn(5, 8))
    assert images.shape == (5, 1, size, size)
    assert images.min() >= 0 and images.max() <= 1
    assert d(images).shape == (5,)


def test_generator_runs_from_and_to_intermediate_features():
    torch.manual_seed(0)
    g = Generator(latent_dim=8, channels=4).eval()
    z = torch.randn(3, 8)
    features = g(z, stop=2)
    assert features.shape == (3, 8, 8, 8)
    assert torch.allclose(g(features, start=2), g(z))


def test_bad_generator_arguments_raise():
    with pytest.raises(PriorlabError, match="multiple of 4"):
        Generator(image_size=18)
    with pytest.raises(PriorlabError, match="latent_dim"):
        Generator(latent_dim=0)
    g = Generator(latent_dim=8, channels=4)
    with pytest.raises(PriorlabError, match="shape"):
        g(torch.randn(2, 9))
    with pytest.raises(PriorlabError, match="start"):
        g(torch.randn(2, 8), start=2, stop=2)
    with pytest.raises(PriorlabError, match="shape"):
        Discriminator(channels=4)(torch.rand(2, 1, 8, 8))


def test_non_saturating_losses_at_zero_logits():
    zero = torch.zeros(4)
    assert math.isclose(float(discriminator_loss(zero, zero)), 2 * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(generator_loss(zero)), math.log(2), rel_tol=1e-6)


def test_adversarial_training_moves_both_networks_and_adds_the_penalty():
    torch.manual_seed(0)
    g, d = Generator(latent_dim=8, channels=4), Discriminator(channels=4)
    before_g = [p.detach().clone() for p in g.parameters()]
    before_d = [p.detach().clone() for p in d.parameters()]
    history = adversarial_training(g, d, torch.rand(32, 1, 16, 16), steps=3, batch_size=8,
                                   generator_penalty=lambda: torch.tensor(0.5))
    assert len(history["d"]) == 3 and all(math.isfinite(v) for v in history["d"] + history["g"])
    assert history["penalty"] == [0.5] * 3
    assert any(not torch.equal(a, b) for a, b in zip(before_g, g.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_d, d.parameters()))
    with pytest.raises(PriorlabError, match="shape"):
        adversarial_training(g, d, torch.rand(4, 1, 8, 8), steps=1)
    with pytest.raises(PriorlabError, match="NaN"):
        adversarial_training(g, d, torch.full((4, 1, 16, 16), float("nan")), steps=1)


def test_pretrained_gan_is_cached_atomically_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORLAB_CACHE", str(tmp_path))
    g1, d1, info = pretrained_gan(channels=2, latent_dim=4, steps=2, batch_size=4)
    files = list((tmp_path / "gan").iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temporary file left behind
    g2, d2, info2 = pretrained_gan(channels=2, latent_dim=4, steps=2, batch_size=4)
    assert info2 == info
    for a, b in zip(g1.state_dict().values(), g2.state_dict().values()):
        assert torch.equal(a, b)
    pretrained_gan(channels=2, latent_dim=4, steps=3, batch_size=4)
    assert len(list((tmp_path / "gan").iterdir())) == 2  # another setting, another file
    assert gan.cache_dir() == tmp_path


def test_digit_images_are_resized_into_unit_range():
    x, y = digit_images(16, "val")
    assert x.shape[1:] == (1, 16, 16) and len(x) == len(y)
    assert x.min() >= 0 and x.max() <= 1
    with pytest.raises(PriorlabError, match="split"):
        digit_images(16, "training")


def test_frechet_distance_matches_the_closed_form():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    b = 0.5 * torch.randn(300, 5, generator=gen, dtype=torch.float64) + 0.3
    an, bn = a.numpy(), b.numpy()
    ca, cb = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    expected = (np.sum((an.mean(0) - bn.mean(0)) ** 2) + np.trace(ca) + np.trace(cb)
                - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(PriorlabError, match="differ"):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(PriorlabError, match="2 rows"):
        frechet_distance(torch.randn(1, 3), torch.randn(5, 3))
    with pytest.raises(PriorlabError, match="NaN"):
        frechet_distance(torch.full((5, 3), float("nan")), torch.randn(5, 3))


def test_classifier_rates_and_feature_distance():
    x, y = digit_images(16, "val")
    classifier = train_classifier(x[:200], y[:200], epochs=1)
    assert isinstance(classifier, DigitClassifier)
    rates = class_rates(classifier, x[:50])
    assert rates.shape == (10,) and float(rates.sum()) == pytest.approx(1.0)
    assert classifier_frechet_distance(classifier, x[:60], x[:60]) == pytest.approx(0.0, abs=1e-6)
    assert classifier_frechet_distance(classifier, x[:60], torch.rand(60, 1, 16, 16)) > 0


def test_image_grid_tiles_images_with_white_gutters_and_rejects_bad_input():
    from priorlab.generative import image_grid
    images = torch.stack([torch.full((1, 2, 3), v) for v in (0.0, 0.5, 1.0)])
    grid = torch.tensor(image_grid(images, columns=2))
    assert grid.shape == (2 * 3 - 1, 2 * 4 - 1)
    assert grid[0:2, 0:3].eq(0).all() and grid[0:2, 4:7].eq(0.5).all() and grid[3:5, 0:3].eq(1).all()
    assert grid[2].eq(1).all() and grid[:, 3].eq(1).all() and grid[3:5, 4:7].eq(1).all()  # gutters, empty
    with pytest.raises(PriorlabError, match="images"):
        image_grid(torch.rand(2, 2, 3, 3))  # two channels
    with pytest.raises(PriorlabError, match="columns"):
        image_grid(images, columns=0)
