"""Tests for the solver-heuristic regularisers (papers 45 and 11)."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.solver_regularisation import (
    annealed_strength, global_solver_penalty, local_solver_penalty, regularised_loss, stats_penalty,
)
from priorlab.nn.neural_ode import NeuralODE, TimeMLP, local_step, solve


def test_global_penalty_known_value():
    estimates = [torch.tensor(0.5), torch.tensor(1.0)]
    assert float(global_solver_penalty(estimates, [0.2, 0.4])) == pytest.approx((0.1 + 0.4) / 2)


def test_local_penalty_known_value():
    assert float(local_solver_penalty(torch.tensor(0.25), 0.5)) == pytest.approx(0.125)


def test_zero_strength_is_the_task_loss():
    task = torch.tensor(1.5, requires_grad=True)
    assert regularised_loss(task, torch.tensor(3.0), 0.0) is task
    assert float(regularised_loss(task, torch.tensor(3.0), 2.0).detach()) == pytest.approx(7.5)


def test_stats_penalty_matches_the_solve_and_has_gradients():
    torch.manual_seed(0)
    model = NeuralODE(TimeMLP(3, 8), rtol=1e-5, atol=1e-5)
    model(torch.randn(4, 3))
    stats = model.last_stats
    for heuristic, values in (("error", stats.error_estimates), ("stiffness", stats.stiffness_estimates)):
        penalty = stats_penalty(stats, heuristic)
        expected = sum(float(v.detach()) * dt for v, dt in zip(values, stats.dts)) / stats.n_accepted
        assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    stats_penalty(stats).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_regulariser_lowers_the_penalty_it_measures():
    # a few gradient steps on the error penalty alone make the dynamics cheaper to integrate
    torch.manual_seed(0)
    model = NeuralODE(TimeMLP(2, 16), rtol=1e-6, atol=1e-6)
    x = torch.randn(16, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    penalties = []
    for _ in range(8):
        model(x)
        penalty = stats_penalty(model.last_stats)
        penalties.append(float(penalty.detach()))
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    assert penalties[-1] < penalties[0]


def test_annealed_strength_runs_from_start_to_end():
    assert annealed_strength(100.0, 10.0, 0, 8) == pytest.approx(100.0)
    assert annealed_strength(100.0, 10.0, 8, 8) == pytest.approx(10.0)
    assert annealed_strength(100.0, 10.0, 4, 8) == pytest.approx(math.sqrt(1000.0))


@pytest.mark.parametrize("bad", [
    lambda: global_solver_penalty([], []),
    lambda: global_solver_penalty([torch.tensor(1.0)], [0.1, 0.2]),
    lambda: global_solver_penalty([torch.tensor(float("nan"))], [0.1]),
    lambda: global_solver_penalty([torch.tensor(1.0)], [-0.1]),
    lambda: local_solver_penalty(torch.ones(2), 0.1),
    lambda: local_solver_penalty(torch.tensor(1.0), 0.0),
    lambda: regularised_loss(torch.tensor(1.0), torch.tensor(1.0), -1.0),
    lambda: stats_penalty(solve(lambda t, y: -y, torch.ones(1, 1))[1], "eror"),
    lambda: annealed_strength(0.0, 1.0, 0, 1),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


@pytest.mark.parametrize("bad, name", [
    (lambda: global_solver_penalty(1.5, [0.1]), "estimates"),  # not a list (fuzz)
    (lambda: global_solver_penalty([torch.ones(1), torch.tensor(2.0)], "0.5"), "dts"),
    (lambda: global_solver_penalty([torch.ones(2)], [0.1, 0.2]), "estimates"),
    (lambda: regularised_loss(torch.tensor(math.nan), torch.tensor(1.0), 0.1), "task_loss"),
    (lambda: regularised_loss(torch.tensor(1.0), None, 0.1), "penalty"),
    (lambda: local_step(TimeMLP(3, 4), math.nan, torch.ones(1, 3)), r"\bt\b"),
    (lambda: local_step(TimeMLP(3, 4), 0.5, torch.ones(1, 3).half()), r"\by\b"),
    (lambda: local_step(TimeMLP(3, 4), 0.5, torch.ones(1, 1, 3)), r"\by\b"),
])
def test_bad_input_names_the_argument(bad, name):
    with pytest.raises(PriorlabError, match=name):
        bad()
