"""SF(DA)^2, AaD and SHOT losses (priorlab.functional.source_free) and the p031 reproduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.functional.source_free import (
    ClassCovariance,
    NeighbourhoodLoss,
    covariance_disentanglement_loss,
    decayed_weight,
    dispersion_loss,
    implicit_feature_augmentation_loss,
    information_maximisation_loss,
    nearest_neighbours,
    neighbour_attraction_loss,
    shot_pseudo_labels,
)


def _probs(n: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed)).softmax(1)


def test_attraction_matches_official_kl_form_up_to_a_constant():
    p = _probs(6, 4).requires_grad_(True)
    q = _probs(18, 4, seed=1).view(6, 3, 4)
    ours = neighbour_attraction_loss(p, q)
    # the official code: F.kl_div with probabilities (not logs) as input
    official = F.kl_div(p.unsqueeze(1).expand(-1, 3, -1), q, reduction="none").sum(-1).sum(1).mean()
    constant = (q * q.log()).sum(dim=(1, 2)).mean()
    assert torch.allclose(official, ours + constant, atol=1e-6)
    g_ours, = torch.autograd.grad(ours, p)
    g_official, = torch.autograd.grad(official, p)
    assert torch.allclose(g_ours, g_official, atol=1e-6)


def test_dispersion_known_values():
    one_hot = torch.eye(3)
    assert float(dispersion_loss(one_hot)) == 0.0  # orthogonal predictions: nothing to disperse
    uniform = torch.full((4, 2), 0.5)
    assert math.isclose(float(dispersion_loss(uniform, squared=False)), 3 * 0.5)
    assert math.isclose(float(dispersion_loss(uniform, squared=True)), 3 * 0.25)


def test_decayed_weight_schedule():
    assert decayed_weight(0.0) == 1.0
    assert math.isclose(decayed_weight(1.0, alpha=2.0, beta=1.0), 2.0 / 11)
    with pytest.raises(PriorlabError):
        decayed_weight(1.5)


def test_nearest_neighbours_excludes_self():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    near = nearest_neighbours(bank[:1], bank, k=1)
    assert near.tolist() == [[1]]
    assert nearest_neighbours(bank[2:3], bank, k=1, exclude_self=False).tolist() == [[2]]


def test_class_covariance_matches_batch_statistics():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 3, generator=generator)
    labels = torch.arange(40) % 2
    estimator = ClassCovariance(2, 3)
    # two halves merged online = the covariance of all samples of the class (biased, 1/n)
    estimator.update(features[:20], labels[:20])
    merged = estimator.update(features[20:], labels[20:])
    for c in range(2):
        x = features[labels == c]
        centred = x - x.mean(0)
        assert torch.allclose(merged[c], centred.T @ centred / len(x), atol=1e-5)


def test_ifa_zero_ratio_is_cross_entropy_over_all_classes():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, 4)
    covariance = torch.eye(4).expand(3, 4, 4)
    loss = implicit_feature_augmentation_loss(logits, weight, covariance, ratio=0.0)
    expected = -2 * logits.log_softmax(1).sum(1).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    # augmentation raises the competing logits, so the bound grows with the ratio
    assert implicit_feature_augmentation_loss(logits, weight, covariance, ratio=1.0) > loss


def test_fd_pushes_apart_confused_classes_only():
    covariance = torch.stack([torch.eye(2), torch.eye(2), torch.diag(torch.tensor([1.0, 0.0]))])
    confused = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert abs(float(covariance_disentanglement_loss(covariance, confused))) < 1e-6  # 0, 1 equal
    separate = torch.eye(3)
    assert abs(float(covariance_disentanglement_loss(covariance, separate))) < 1e-6  # no overlap
    blurred = torch.full((3, 3), 1 / 3)
    assert float(covariance_disentanglement_loss(covariance, blurred)) < 0


def test_information_maximisation_known_values():
    # confident and balanced: zero entropy, maximal diversity
    assert math.isclose(float(information_maximisation_loss(torch.eye(4))), -math.log(4), rel_tol=1e-4)
    uniform = torch.full((4, 4), 0.25)
    assert abs(float(information_maximisation_loss(uniform))) < 1e-4


def test_shot_pseudo_labels_recover_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    labels = torch.arange(60) % 2
    features = centres[labels] + 0.3 * torch.randn(60, 2, generator=generator)
    noisy = F.one_hot(labels, 2).float() * 0.6 + 0.2  # weak but right predictions
    noisy[:5] = noisy[:5].flip(1)  # a few wrong ones
    assert torch.equal(shot_pseudo_labels(features, noisy), labels)


def _objective(variant="sfda2", **kwargs):
    objective = NeighbourhoodLoss(32, 3, 4, variant=variant, k=3, **kwargs)
    generator = torch.Generator().manual_seed(0)
    objective.fill_banks(torch.randn(32, 4, generator=generator), _probs(32, 3))
    return objective


@pytest.mark.parametrize("variant", ["sfda2", "aad"])
def test_objective_gradients_finite_and_banks_updated(variant):
    objective = _objective(variant)
    features = torch.randn(8, 4, requires_grad=True)
    weight = torch.randn(3, 4, requires_grad=True)
    idx = torch.arange(8)
    loss, terms = objective(idx, features, features @ weight.T, weight, progress=0.5)
    loss.backward()
    assert torch.isfinite(features.grad).all() and torch.isfinite(weight.grad).all()
    assert torch.allclose(objective.feature_bank[:8], F.normalize(features.detach(), dim=1))
    assert ("ifa" in terms) == (variant == "sfda2")


def test_sfda2_differs_from_aad_and_reduces_to_snc():
    features = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    idx = torch.arange(8)
    sfda2, _ = _objective()(idx, features, features @ weight.T, weight, 0.5)
    aad, _ = _objective("aad")(idx, features, features @ weight.T, weight, 0.5)
    snc, terms = _objective(alpha_1=0.0, alpha_2=0.0)(idx, features, features @ weight.T, weight, 0.5)
    assert not torch.isclose(sfda2, aad)
    expected = terms["attraction"] + decayed_weight(0.5) * terms["dispersion"]
    assert math.isclose(float(snc), expected, rel_tol=1e-5)


@pytest.mark.parametrize("bad", [
    lambda: NeighbourhoodLoss(32, 3, 4, variant="sfda"),
    lambda: NeighbourhoodLoss(32, 3, 4, k=32),
    lambda: NeighbourhoodLoss(32, 3, 4, alpha=-1.0),
    lambda: NeighbourhoodLoss(32, 3, 4, lambda_0=float("nan")),
    lambda: _objective().fill_banks(torch.zeros(5, 4), _probs(5, 3)),
    lambda: dispersion_loss(torch.ones(1, 3)),
    lambda: dispersion_loss(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]])),
    lambda: neighbour_attraction_loss(_probs(4, 3), _probs(8, 3).view(4, 2, 3)[:, :, :2]),
    lambda: ClassCovariance(3, 2).update(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3])),
    lambda: implicit_feature_augmentation_loss(torch.zeros(2, 3), torch.zeros(3, 4),
                                               torch.zeros(3, 4, 4), ratio=-1.0),
    lambda: shot_pseudo_labels(torch.zeros(4, 2), _probs(5, 2)),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_corruption_is_fixed_and_shifts_images():
    from priorlab.reproductions.p031_sfda2 import corrupt
    x = torch.rand(4, 1, 8, 8)
    a = corrupt(x, rotation=30.0, contrast=0.5, noise=0.2, seed=1)
    assert torch.equal(a, corrupt(x, rotation=30.0, contrast=0.5, noise=0.2, seed=1))
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)
    assert torch.allclose(corrupt(x, rotation=0.0, contrast=1.0, noise=0.0), x, atol=1e-5)
