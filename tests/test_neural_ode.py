"""Tests for the adaptive Dormand–Prince solver shared by papers 45 and 11."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.nn.neural_ode import (
    STAGES_PER_STEP, NeuralODE, TimeMLP, dopri5_step, local_step, solve,
)


def _decay(t, y):
    return -y


def test_exponential_decay_matches_exp():
    y0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    y1, stats = solve(_decay, y0, 0.0, 2.0, rtol=1e-8, atol=1e-10)
    assert torch.allclose(y1, y0 * math.exp(-2.0), rtol=1e-6, atol=0)
    assert stats.n_accepted > 1


def test_looser_tolerance_takes_fewer_steps():
    y0 = torch.ones(1, 3, dtype=torch.float64)
    _, tight = solve(_decay, y0, 0.0, 3.0, rtol=1e-9, atol=1e-9)
    _, loose = solve(_decay, y0, 0.0, 3.0, rtol=1e-3, atol=1e-3)
    assert loose.n_accepted < tight.n_accepted


def test_nfe_counts_every_call():
    calls = []

    def field(t, y):
        calls.append(t)
        return -y

    _, stats = solve(field, torch.ones(1, 2), 0.0, 1.0)
    assert stats.nfe == len(calls)
    # k1, one call for the starting step, 6 per attempted step (FSAL)
    assert stats.nfe == 2 + STAGES_PER_STEP * (stats.n_accepted + stats.n_rejected)


def test_steps_cover_the_interval_and_errors_are_accepted():
    _, stats = solve(lambda t, y: math.cos(3 * t) * y, torch.ones(2, 2), 0.0, 2.0, rtol=1e-6, atol=1e-6)
    assert math.isclose(sum(stats.dts), 2.0, rel_tol=1e-9)
    assert all(float(e) <= 1.0 for e in stats.error_estimates)
    assert stats.times[0] == 0.0


def test_single_step_error_estimate_known_value():
    # dy/dt = 1: every stage is exact, the embedded error vanishes
    y = torch.zeros(1, 1, dtype=torch.float64)
    y1, eest, _, _ = dopri5_step(lambda t, y: torch.ones_like(y), 0.0, y, 0.5, torch.ones_like(y), 1e-6, 1e-6)
    assert float(y1) == pytest.approx(0.5)
    assert float(eest) == pytest.approx(0.0, abs=1e-9)


def test_stiffness_estimate_recovers_the_eigenvalue():
    # for dy/dt = -50 y the Dormand–Prince heuristic gives |lambda| = 50
    y = torch.ones(1, 1, dtype=torch.float64)
    _, _, stiffness, _ = dopri5_step(lambda t, y: -50 * y, 0.0, y, 0.01, -50 * y, 1e-6, 1e-6)
    assert float(stiffness) == pytest.approx(50.0, rel=1e-6)


def test_gradients_flow_through_solution_and_error_estimates():
    torch.manual_seed(0)
    model = NeuralODE(TimeMLP(3, 8), rtol=1e-4, atol=1e-4)
    y = model(torch.randn(5, 3))
    loss = y.square().mean() + torch.stack(model.last_stats.error_estimates).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_sample_state_is_interpolated_and_local_step_is_differentiable():
    y0 = torch.ones(1, 2, dtype=torch.float64)
    _, stats = solve(_decay, y0, 0.0, 1.0, rtol=1e-8, atol=1e-8, sample_time=0.37)
    assert torch.allclose(stats.sample_state, y0 * math.exp(-0.37), atol=1e-6)
    torch.manual_seed(0)
    dynamics = TimeMLP(2, 4)
    eest, stiffness, dt, nfe = local_step(dynamics, 0.3, torch.randn(3, 2))
    assert dt > 0 and nfe == 2 + STAGES_PER_STEP
    (eest * dt + stiffness).backward()
    assert all(torch.isfinite(p.grad).all() for p in dynamics.parameters())


@pytest.mark.parametrize("bad", [
    lambda: solve(_decay, torch.ones(2), 1.0, 0.0),
    lambda: solve(_decay, torch.ones(2), rtol=0.0),
    lambda: solve(_decay, torch.tensor([float("nan")])),
    lambda: solve(_decay, torch.ones(2, dtype=torch.int64)),
    lambda: solve(_decay, torch.ones(2), sample_time=2.0),
    lambda: solve(lambda t, y: -1e6 * y, torch.ones(2), max_steps=3),
    lambda: NeuralODE(TimeMLP(2, 2), t0=1.0, t1=1.0),
    lambda: TimeMLP(0, 2),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()
