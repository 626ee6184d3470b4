"""Wu & Su's stability bounds (seed 24): the diagnostic, the diagonal linear network, the reproduction."""

import math

import numpy as np
import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.methods.stability import (
    DiagonalLinearNet,
    StabilityReport,
    stability_bound_check,
)
from priorlab.reproductions import p024_stability


def mse(out, target):
    return 0.5 * ((out - target) ** 2).mean()


def test_diagonal_net_predicts_with_u2_minus_v2():
    net = DiagonalLinearNet(3, init_scale=0.5)
    assert torch.equal(net.predictor, torch.zeros(3, dtype=torch.float64))
    with torch.no_grad():
        net.u.copy_(torch.tensor([1.0, 2.0, 0.0]))
        net.v.copy_(torch.tensor([0.0, 1.0, 3.0]))
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, 0.0, -1.0]], dtype=torch.float64)
    torch.testing.assert_close(net(x), torch.tensor([1.0 + 3.0 - 9.0, 2.0 + 9.0], dtype=torch.float64))
    for bad in (lambda: DiagonalLinearNet(0), lambda: DiagonalLinearNet(3, init_scale=-1.0),
                lambda: net(torch.ones(2, 4))):
        with pytest.raises(PriorlabError):
            bad()


def test_trace_of_diagonal_net_matches_closed_form():
    # Tr(H) = (4/n) sum_ij (u_j² + v_j²) x_ij²: the residual term's trace cancels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = torch.randn(12, generator=g, dtype=torch.float64)
    net = DiagonalLinearNet(6)
    with torch.no_grad():
        net.u.copy_(torch.rand(6, generator=g, dtype=torch.float64))
        net.v.copy_(torch.rand(6, generator=g, dtype=torch.float64))
    u, v = net.u.detach(), net.v.detach()
    closed = float(4 * ((u ** 2 + v ** 2) * (x ** 2).mean(0)).sum())
    exact = stability_bound_check(net, mse, (x, y), lr=0.1)
    assert exact.exact and exact.trace == pytest.approx(closed, rel=1e-10)
    assert closed == pytest.approx(p024_stability._trace(net.u.detach().numpy(),
                                                          net.v.detach().numpy(), x.numpy()))
    estimated = stability_bound_check(net, mse, (x, y), lr=0.1, exact_up_to=0, num_samples=500,
                                      iters=500)
    assert not estimated.exact
    assert estimated.trace == pytest.approx(closed, rel=0.1)
    assert estimated.sharpness == pytest.approx(exact.sharpness, rel=1e-3)


def test_report_compares_trace_and_sharpness_with_two_over_lr():
    report = StabilityReport(lr=0.1, trace=25.0, sharpness=12.0, exact=True)
    assert report.bound == pytest.approx(20.0)
    assert report.trace_ratio == pytest.approx(1.25) and not report.sgd_bound_holds
    assert report.sharpness_ratio == pytest.approx(0.6) and report.gd_bound_holds


def test_bounds_predict_which_algorithm_stays_at_the_minimum():
    # two orthogonal samples of squared norm c, labels 0: H = diag(c/2, c/2), Tr(H) = c.
    # Single-sample SGD multiplies coordinate i by (1 - lr c): stable iff lr c <= 2 (trace bound);
    # GD multiplies both by (1 - lr c / 2): stable iff lr c <= 4 (sharpness bound).
    c = 2.0
    x = torch.tensor([[c ** 0.5, 0.0], [0.0, c ** 0.5]], dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.float64)
    model = torch.nn.Linear(2, 1, bias=False).double()

    def out(inputs):
        return model(inputs).squeeze(-1)

    def loss(o, t):
        return mse(o.squeeze(-1), t)

    lr = 2.2 / c
    report = stability_bound_check(model, loss, (x, y), lr=lr)
    assert report.trace == pytest.approx(c) and report.sharpness == pytest.approx(c / 2)
    assert not report.sgd_bound_holds and report.gd_bound_holds

    def run(batches):
        with torch.no_grad():
            model.weight.fill_(1e-3)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for step in range(60):
            xb, yb = batches(step)
            opt.zero_grad()
            mse(out(xb), yb).backward()
            opt.step()
        return float(model.weight.detach().abs().max())

    assert run(lambda step: (x, y)) < 1e-6  # GD converges
    # SGD is thrown off: each coordinate grows by 1.2 per visit, 30 visits: 1e-3 -> 0.24
    assert run(lambda step: (x[step % 2:step % 2 + 1], y[:1])) > 0.1


def test_numpy_step_of_the_reproduction_equals_torch_sgd():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(5, generator=g, dtype=torch.float64)
    net = DiagonalLinearNet(4, init_scale=0.7)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt.zero_grad()
    mse(net(x[1:3]), y[1:3]).backward()
    opt.step()
    u, v = p024_stability.diagonal_net_step(np.full(4, 0.7), np.full(4, 0.7), x[1:3].numpy(),
                                            y[1:3].numpy(), 0.05)
    np.testing.assert_allclose(u, net.u.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(v, net.v.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf"), True])
def test_bad_learning_rate_raises(lr):
    net = DiagonalLinearNet(3)
    with pytest.raises(PriorlabError, match="lr"):
        stability_bound_check(net, mse, (torch.ones(2, 3), torch.ones(2)), lr=lr)


def test_reference_lr_leaves_exactly_the_sparse_solution_room():
    x, _, b_true = p024_stability._problem(100, 40, 5, 0)
    lr = p024_stability.reference_lr(x, b_true)
    sparse_trace_floor = 4 * np.abs(b_true).sum() * (x ** 2).mean()
    assert 2 / lr == pytest.approx(sparse_trace_floor)


def test_reproduction_smoke_runs_every_arm():
    claim = p024_stability.CLAIM
    cfg = dict(claim.tiers["smoke"], steps=1_500, warmup=500)
    outs = {arm: p024_stability.run(arm, cfg, seed=0) for arm in claim.arms}
    for out in outs.values():
        assert claim.metric in out.metrics
        assert all(math.isfinite(v) for v in out.metrics.values())
        if not out.metrics["diverged"]:
            assert set(claim.extra_metrics) <= set(out.metrics)
    # same data and start, different algorithm: SGD and GD end at different predictors
    for lr in p024_stability.LR_FRACTIONS:
        sgd, gd = outs[f"sgd_{lr}"].metrics, outs[f"gd_{lr}"].metrics
        assert sgd["test_error"] != gd["test_error"]
        assert sgd["trace_ratio"] != gd["trace_ratio"]
    # the ratios are the measured quantities over the bound 2/lr
    for out in outs.values():
        m = out.metrics
        assert m["trace_ratio"] == pytest.approx(m["trace"] * m["lr"] / 2)
        assert m["sharpness_ratio"] == pytest.approx(m["sharpness"] * m["lr"] / 2)
    # GD's trace ratio grows with lr (its minimum barely moves); only lambda_max holds it
    assert outs["gd_lr0.6"].metrics["trace_ratio"] > outs["gd_lr0.2"].metrics["trace_ratio"]
    # every bound names an arm that runs and a metric the runs report
    for bound in p024_stability.CLAIM.bounds:
        assert bound.metric in outs[bound.arm].metrics and bound.bar == 1.0
    with pytest.raises(PriorlabError):
        p024_stability.run("adam_lr0.2", cfg, seed=0)
