"""DCDM (seed 43): scale-invariant loss, solver reduces to CG / steepest descent, A-orthogonality."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from priorlab.errors import PriorlabError
from priorlab.optim.dcdm import (
    DCDMLoss,
    DirectionNet,
    dcdm_loss,
    dcdm_solve,
    pcg_solve,
    poisson_apply,
    poisson_matrix,
)
from priorlab.registry import get
from priorlab.reproductions import p043_dcdm


def _identity(r):
    return r.clone()


def _spd(n=12, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n), rng.standard_normal(n)


def test_poisson_apply_matches_matrix():
    q = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    expected = (poisson_matrix(6) @ q.flatten(1).numpy().T).T
    torch.testing.assert_close(poisson_apply(q).flatten(1), torch.from_numpy(expected))


def test_loss_is_scale_invariant_and_zero_at_exact_solution():
    b = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    q = torch.randn_like(b)
    base = dcdm_loss(q, b)
    for c in (3.0, -0.01, 250.0):
        torch.testing.assert_close(dcdm_loss(c * q, b), base)
    exact = np.linalg.solve(poisson_matrix(8).toarray(), b.flatten(1).numpy().T).T
    assert dcdm_loss(torch.from_numpy(exact).view_as(b), b) < 1e-20
    assert DCDMLoss()(q, b) == base


def test_loss_gradients_finite_through_network():
    torch.manual_seed(0)
    net = DirectionNet(channels=4, levels=1, blocks=1)
    b = torch.randn(2, 1, 8, 8)
    dcdm_loss(net(b), b).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_identity_network_is_cg_and_zero_orth_is_steepest_descent():
    A = poisson_matrix(8)
    b = np.random.default_rng(1).standard_normal(64)
    cg = pcg_solve(A, b, None, tol=1e-8, max_iter=500)
    conj = dcdm_solve(A, b, _identity, tol=1e-8, max_iter=500, n_orth=2)
    sd = dcdm_solve(A, b, _identity, tol=1e-8, max_iter=2000, n_orth=0)
    assert cg.converged and conj.converged and sd.converged
    assert abs(conj.iterations - cg.iterations) <= 1
    np.testing.assert_allclose(conj.residuals[:10], cg.residuals[:10], rtol=1e-4)
    assert sd.iterations > 2 * cg.iterations
    np.testing.assert_allclose(A @ conj.x, b, atol=1e-6)


def test_directions_are_a_orthogonal_to_the_last_n_orth():
    A, b = _spd()
    rng = np.random.default_rng(3)
    recorded = []

    def poor_network(r):  # r plus a random perturbation: directions far from CG's
        q = r + 0.5 * torch.from_numpy(rng.standard_normal(r.shape)).float()
        recorded.append(q)
        return q

    result = dcdm_solve(A, b, poor_network, tol=1e-10, max_iter=6, n_orth=2, shape=(3, 4))
    assert result.iterations == 6
    # x_k - x_{k-1} = alpha_k p_k: the steps are the A-orthogonalised directions
    steps = np.diff(_iterates(A, b, recorded), axis=0)
    for k in range(2, len(steps)):
        for j in (k - 1, k - 2):
            cos = steps[k] @ A @ steps[j] / np.sqrt(
                (steps[k] @ A @ steps[k]) * (steps[j] @ A @ steps[j]))
            assert abs(cos) < 1e-5


def _iterates(A, b, recorded):
    """Replay the solver step by step (max_iter = 1, 2, ...) with the recorded outputs."""
    outputs = list(recorded)
    xs = [np.zeros_like(b)]
    for steps in range(1, len(outputs) + 1):
        replay = iter(outputs)
        xs.append(dcdm_solve(A, b, lambda r: next(replay), tol=1e-12, max_iter=steps,
                             n_orth=2, shape=(3, 4)).x)
    return np.stack(xs)


def test_converges_on_tiny_spd_system_and_zero_rhs():
    A, b = _spd()
    result = dcdm_solve(sp.csr_matrix(A), b, _identity, tol=1e-10, max_iter=50, shape=(3, 4))
    assert result.converged and result.iterations <= 20  # float32 directions: ~n, not exactly n
    np.testing.assert_allclose(A @ result.x, b, atol=1e-8)
    zero = dcdm_solve(A, np.zeros(12), _identity, shape=(3, 4))
    assert zero.iterations == 0 and zero.converged


def test_network_transfers_across_grid_sizes():
    net = DirectionNet(channels=4, levels=2)
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("call", [
    lambda: dcdm_solve(poisson_matrix(4), np.ones(15), _identity),
    lambda: dcdm_solve(poisson_matrix(4), np.full(16, np.nan), _identity),
    lambda: dcdm_solve(np.ones((3, 4)), np.ones(3), _identity),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), _identity, tol=0.0),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), _identity, max_iter=0),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), _identity, n_orth=-1),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), "net"),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), lambda r: r[..., :2]),
    lambda: dcdm_solve(poisson_matrix(4), np.ones(16), lambda r: r * float("nan")),
    lambda: dcdm_solve(poisson_matrix(3), np.ones(9), _identity, shape=(2, 4)),
    lambda: dcdm_loss(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 5)),
    lambda: dcdm_loss(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), lambda q: q[..., :2]),
    lambda: DirectionNet(channels=0),
    lambda: DirectionNet(levels=2)(torch.randn(1, 1, 6, 6)),
    lambda: DCDMLoss(apply_a="A"),
    lambda: pcg_solve(poisson_matrix(4), np.ones(16), tol=2.0),
    lambda: poisson_matrix(1),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_ic0_matches_pattern_and_training_rhs_recipe():
    A = poisson_matrix(6)
    lower = p043_dcdm.ic0(A)
    assert abs((lower @ lower.T - A).multiply(A != 0)).max() < 1e-12
    rhs = p043_dcdm.training_rhs(6, 5, np.random.default_rng(0), 0.05, 9.0)
    np.testing.assert_allclose(np.linalg.norm(rhs, axis=1), 1.0)
    basis = p043_dcdm._eigenbasis(6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(36), atol=1e-12)


def test_card_and_repro_arms_differ():
    assert get("dcdm").reproduction == "p043_dcdm"
    cfg = p043_dcdm.CLAIM.tiers["smoke"]
    cg = p043_dcdm.run("cg", cfg, 0)
    amg = p043_dcdm.run("pcg_amg", cfg, 0)
    assert cg.metrics["converged"] == 1.0 and amg.metrics["iterations"] < cg.metrics["iterations"]
    with pytest.raises(PriorlabError):
        p043_dcdm.run("dcmd", cfg, 0)


@pytest.mark.parametrize("q, b, name", [
    (torch.zeros(0, 1, 4, 4), torch.zeros(0, 1, 4, 4), "q"),  # empty batch: mean of nothing (fuzz)
    (torch.full((1, 1, 4, 4), float("nan")), torch.ones(1, 1, 4, 4), "q"),
    (torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), float("inf")), "b"),
])
def test_dcdm_loss_rejects_empty_and_non_finite_input(q, b, name):
    with pytest.raises(PriorlabError, match=rf"\b{name}\b"):
        dcdm_loss(q, b)
