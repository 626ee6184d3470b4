"""Liu et al.'s flatness (seed 34): the Hessian-trace monitor and the reproduction."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.diagnostics.hessian import hutchinson_trace
from priorlab.errors import PriorlabError
from priorlab.methods.flatness import HessianTraceMonitor
from priorlab.reproductions import p034_flatness
from priorlab.train import fit


def setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(24, 5, generator=g), torch.randint(0, 3, (24,), generator=g)
    return model, x, y


def test_monitor_records_the_trace_every_k_steps_without_changing_training():
    model, x, y = setup()
    reference = copy.deepcopy(model)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    monitor = HessianTraceMonitor(F.cross_entropy, (x, y), every=3, num_samples=5)
    fit(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, epochs=4,
        adapters=[monitor], show_progress=False)
    assert monitor.history["step"] == [3.0, 6.0]
    assert len(monitor.history["trace"]) == len(monitor.history["std_error"]) == 2
    # the last record is the estimate at the final parameters (step 8 is not a multiple of 3,
    # so measure again there and compare with a direct call)
    last = monitor.measure(model, 8)
    assert last == pytest.approx(hutchinson_trace(model, F.cross_entropy, (x, y), num_samples=5,
                                                  seed=0).trace)
    fit(reference, batches, torch.optim.SGD(reference.parameters(), lr=0.1), F.cross_entropy,
        epochs=4, show_progress=False)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_monitor_on_a_quadratic_records_the_exact_trace():
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.theta = nn.Parameter(torch.ones(3, dtype=torch.float64))

        def forward(self, x):
            return self.theta

    diag = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    monitor = HessianTraceMonitor(lambda out, t: 0.5 * (diag * out * out).sum(),
                                  (torch.zeros(1, 1), torch.zeros(1)), num_samples=2)
    assert monitor.measure(Quadratic(), 0) == pytest.approx(7.0)  # Rademacher: exact on diagonals


def test_state_dict_round_trip_and_bad_state():
    model, x, y = setup()
    monitor = HessianTraceMonitor(F.cross_entropy, (x, y), num_samples=3)
    monitor.measure(model, 10)
    other = HessianTraceMonitor(F.cross_entropy, (x, y), num_samples=3)
    other.load_state_dict(monitor.state_dict())
    assert other.history == monitor.history
    with pytest.raises(PriorlabError):
        other.load_state_dict({"step": [1.0], "trace": []})


@pytest.mark.parametrize("kwargs", [{"every": 0}, {"num_samples": -1}, {"every": 2.5},
                                    {"seed": "zero"}])
def test_bad_arguments_raise(kwargs):
    _, x, y = setup()
    with pytest.raises(PriorlabError):
        HessianTraceMonitor(F.cross_entropy, (x, y), **kwargs)


def test_reproduction_smoke_shares_one_trajectory_between_arms():
    claim = p034_flatness.CLAIM
    cfg = dict(claim.tiers["smoke"], converged_step=100, continued_step=300, eval_every=100,
               trace_probes=5)
    outputs = {arm: p034_flatness.run(arm, cfg, seed=0) for arm in claim.arms}
    for out in outputs.values():
        assert {claim.metric, *claim.extra_metrics} <= set(out.metrics)
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert out.metrics["excess_loss"] > -1e-6  # the optimal loss is a true floor
        assert 0 < out.metrics["probe_acc"] <= out.metrics["probe_bayes_acc"] + 1e-9
    assert outputs["converged"].curves == outputs["continued"].curves
    # ... but read at different steps: the continued arm is a different model
    for comparison in claim.comparisons:
        method, baseline = outputs[comparison.method].metrics, outputs[comparison.baseline].metrics
        assert method["step"] != baseline["step"]
        assert method["excess_loss"] != baseline["excess_loss"]
        assert method["hessian_trace"] != baseline["hessian_trace"]
    assert outputs["converged"].metrics["step"] == 100 and outputs["continued"].metrics["step"] == 300
