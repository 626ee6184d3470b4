"""NAISR (seed 37) and the shape-family toolkit: known values, invariants, bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.fields.sdf import (
    Shape,
    capsule_sdf,
    extract_surface,
    grid_points,
    implicit_normals,
    sample_sdf,
    tube_family,
)
from priorlab.nn.naisr import NAISR, ConditionalSDF, count_parameters, fit_codes, sdf_loss_terms
from priorlab.reproductions import p037_naisr


def test_capsule_known_values():
    points = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, 0.2]])
    expected = [-0.22, 0.78, 0.6 - 0.22, 0.3 - 0.22]
    np.testing.assert_allclose(capsule_sdf(points), expected, atol=1e-12)


def test_family_at_zero_is_the_template_and_each_effect_moves_its_own_way():
    family = tube_family()
    points = grid_points(9)
    rest = Shape(np.zeros(3), np.zeros(2))
    np.testing.assert_allclose(family.implicit(points, rest), capsule_sdf(points))
    # "length" +1 makes the tube longer: the old tip (0, 0, 0.62) is now inside
    tip = np.array([[0.0, 0.0, 0.62]])
    assert family.implicit(tip, Shape(np.array([1.0, 0, 0]), np.zeros(2)))[0] < 0
    assert family.implicit(tip, Shape(np.array([-1.0, 0, 0]), np.zeros(2)))[0] > 0
    with pytest.raises(PriorlabError, match="3 covariate"):
        family.implicit(points, Shape(np.zeros(2), np.zeros(2)))
    shapes = family.draw(4, np.random.default_rng(0), individual=False)
    assert len(shapes) == 4 and all(np.all(s.variation == 0) for s in shapes)
    with pytest.raises(PriorlabError, match="covariates"):
        family.draw(2, np.random.default_rng(0), covariates=np.zeros((3, 3)))


def test_surface_extraction_and_sdf_samples_match_the_exact_sdf():
    resolution = 33
    values = (np.linalg.norm(grid_points(resolution), axis=1) - 0.5).reshape((resolution,) * 3)
    surface = extract_surface(values, 500, seed=0)
    assert surface.shape == (500, 3)
    assert np.abs(np.linalg.norm(surface, axis=1) - 0.5).max() < 0.01
    # no zero crossing: the nearest grid vertices stand in, finite
    fallback = extract_surface(values + 5.0, 10)
    assert fallback.shape == (10, 3) and np.isfinite(fallback).all()
    samples = sample_sdf(capsule_sdf, n_surface=200, n_near=300, n_space=100, resolution=40,
                         dense=8000, seed=0)
    np.testing.assert_allclose(capsule_sdf(samples.surface), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(samples.normals, axis=1), 1.0, atol=1e-6)
    assert np.abs(samples.sdf - capsule_sdf(samples.points)).max() < 0.02
    np.testing.assert_allclose(implicit_normals(capsule_sdf, np.array([[0.22, 0.0, 0.0]])),
                               [[1.0, 0.0, 0.0]], atol=1e-6)
    with pytest.raises(PriorlabError, match="no surface"):
        sample_sdf(lambda p: capsule_sdf(p) + 10.0, resolution=8)
    with pytest.raises(PriorlabError, match="cubic"):
        extract_surface(np.zeros((4, 4, 5)), 10)
    with pytest.raises(PriorlabError, match=r"\(N, 3\)"):
        capsule_sdf(np.zeros((4, 2)))


def _model(**kwargs) -> NAISR:
    torch.manual_seed(0)
    return NAISR(n_covariates=2, latent_dim=4, hidden=16, depth=2, **kwargs)


def test_zero_covariates_give_exactly_the_template_in_eval():
    model = _model().eval()
    points = torch.rand(3, 20, 3) * 2 - 1
    codes = torch.randn(3, 4)
    out = model(points, torch.zeros(3, 2), codes)
    assert out.shape == (3, 20, 1)
    torch.testing.assert_close(out, model.template_sdf(points), rtol=0, atol=0)
    # in training mode the reference input is jittered (official), so d_k is small, not zero
    model.train()
    jitter = model.displacements(points, torch.zeros(3, 2), codes).abs().max()
    assert 0 < jitter < 1e-2


def test_displacements_are_additive_and_separate_per_covariate():
    model = _model().eval()
    points = torch.rand(2, 10, 3) * 2 - 1
    codes = torch.randn(2, 4)
    a = model.displacements(points, torch.tensor([[0.5, -0.3], [0.1, 0.9]]), codes)
    b = model.displacements(points, torch.tensor([[0.5, 0.7], [0.1, -0.2]]), codes)
    assert a.shape == (2, 10, 2, 3)
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0])  # covariate 0's field ignores covariate 1
    assert not torch.allclose(a[:, :, 1], b[:, :, 1])
    covariates = torch.tensor([[0.5, -0.3], [0.1, 0.9]])
    torch.testing.assert_close(model(points, covariates, codes),
                               model.template_sdf(points + a.sum(dim=2)))
    # codes=None is the population trend z = 0
    torch.testing.assert_close(model(points, covariates), model(points, covariates, torch.zeros(2, 4)))


def test_loss_terms_vanish_for_an_exact_sdf_and_gradients_are_finite():
    class Sphere(nn.Module):
        latent_dim, n_covariates, dim = 0, 1, 3

        def forward(self, points, covariates, codes=None):
            return points.norm(dim=-1, keepdim=True) - 0.5

    surface = nn.functional.normalize(torch.randn(2, 50, 3), dim=-1) * 0.5
    points = torch.rand(2, 40, 3) * 2 - 1
    terms = sdf_loss_terms(Sphere(), surface, surface / 0.5, points, points.norm(dim=-1) - 0.5,
                           torch.zeros(2, 1))
    assert set(terms) == {"surface", "normal", "off_surface", "eikonal"}
    for name, value in terms.items():
        assert float(value.detach()) < 1e-5, name
    model = _model()
    terms = sdf_loss_terms(model, surface, surface / 0.5, points, points.norm(dim=-1) - 0.5,
                           torch.rand(2, 2), torch.randn(2, 4))
    sum(terms.values()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in (model.deformations[0].head.weight.grad,
                                           model.template.head.weight.grad))


def test_fit_codes_lowers_the_loss_and_leaves_the_network_alone():
    model = _model()
    surface = nn.functional.normalize(torch.randn(2, 32, 3), dim=-1) * 0.5
    points = torch.rand(2, 32, 3) * 2 - 1
    args = (surface, surface / 0.5, points, points.norm(dim=-1) - 0.5, torch.rand(2, 2))
    before = [p.detach().clone() for p in model.parameters()]
    codes = fit_codes(model, *args, steps=30, lr=5e-2, max_norm=1.0)
    assert codes.shape == (2, 4) and float(codes.norm(dim=1).max()) <= 1.0 + 1e-6
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.requires_grad for p in model.parameters()) and model.training
    model.eval()
    start = sum(sdf_loss_terms(model, *args, torch.zeros(2, 4)).values())
    fitted = sum(sdf_loss_terms(model, *args, codes).values())
    assert float(fitted.detach()) < float(start.detach())


def test_state_dict_round_trip_and_baseline_differs():
    model = _model().eval()
    copy = NAISR(n_covariates=2, latent_dim=4, hidden=16, depth=2).eval()
    copy.load_state_dict(model.state_dict())
    points, covariates = torch.rand(1, 8, 3), torch.rand(1, 2)
    torch.testing.assert_close(copy(points, covariates), model(points, covariates))
    baseline = ConditionalSDF(2, latent_dim=4, hidden=16, depth=2).eval()
    assert baseline(points, covariates).shape == (1, 8, 1)
    # the baseline reacts to the covariates at the template value too; NAISR does not
    zero = torch.zeros(1, 2)
    assert not torch.allclose(baseline(points, zero), baseline.net(
        torch.cat([points, torch.ones(1, 8, 2), torch.zeros(1, 8, 4)], -1)))


def test_reproduction_matches_parameter_counts():
    cfg = {**p037_naisr.CLAIM.tiers["full"]}
    naisr = p037_naisr._model("naisr", cfg, 3)
    baseline = p037_naisr._model("conditional_sdf", cfg, 3)
    assert isinstance(baseline, ConditionalSDF)
    assert abs(count_parameters(baseline) - count_parameters(naisr)) / count_parameters(naisr) < 0.01


@pytest.mark.parametrize("bad", [
    lambda m: m(torch.zeros(1, 4, 2), torch.zeros(1, 2)),
    lambda m: m(torch.zeros(1, 4, 3), torch.zeros(2, 2)),
    lambda m: m(torch.zeros(1, 4, 3), torch.full((1, 2), float("nan"))),
    lambda m: m(torch.zeros(1, 4, 3), torch.zeros(1, 2), torch.zeros(1, 3)),
    lambda m: m(torch.zeros(4, 3), torch.zeros(1, 2)),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad(_model())
