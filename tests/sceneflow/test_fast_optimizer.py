"""The fast variant's optimiser: Adam without weight decay (current official FastNSF), SGD on request."""

import numpy as np
import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.sceneflow import defaults, estimate_flow
from priorlab.sceneflow.fast import FastProblem


@pytest.fixture(scope="module")
def shifted_pair():
    rng = np.random.default_rng(1)
    pc1 = rng.uniform([-2, -2, 0], [2, 2, 1], (128, 3)).astype(np.float32)
    return pc1, pc1 + np.array([0.2, 0.0, 0.0], np.float32)


def _problem(pair, lr=1e-2, **overrides):
    opts = {**defaults("fast"), **overrides}
    pc1, pc2 = (torch.from_numpy(p) for p in pair)
    return FastProblem(pc1, pc2, opts, lr, seed=0, device=torch.device("cpu"))


def test_default_is_adam_without_weight_decay(shifted_pair):
    opt = _problem(shifted_pair).optimizer
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["weight_decay"] == 0.0


def test_first_adam_step_moves_each_parameter_by_about_lr(shifted_pair):
    # Adam's first update is lr * g / (|g| + eps): every parameter with a non-negligible gradient
    # moves by ~lr whatever its gradient's size; plain SGD moves them by lr * |g| instead.
    lr = 1e-2
    problem = _problem(shifted_pair, lr=lr)
    before = problem.snapshot()
    problem.loss().backward()
    grads = [p.grad.detach().clone() for p in problem.net.parameters()]
    problem.optimizer.step()
    steps = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(problem.net.parameters(), before)])
    grad_sizes = torch.cat([g.abs().flatten() for g in grads])
    moved = grad_sizes > 1e-6
    assert moved.sum() > 100
    assert torch.allclose(steps[moved], torch.full_like(steps[moved], lr), rtol=1e-2)
    assert steps.max() <= lr * (1 + 1e-5)


def test_sgd_of_the_first_release_is_available_and_differs(shifted_pair):
    opt = _problem(shifted_pair, optimizer="sgd", weight_decay=1e-4).optimizer
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["weight_decay"] == 1e-4 and opt.param_groups[0]["momentum"] == 0.0
    pc1, pc2 = shifted_pair
    kw = dict(max_iters=30, patience=0, progress=False, num_threads=1, seed=3)
    adam = estimate_flow(pc1, pc2, "fast", **kw)
    sgd = estimate_flow(pc1, pc2, "fast", optimizer="sgd", weight_decay=1e-4, **kw)
    assert adam.loss_history[0] == pytest.approx(sgd.loss_history[0])  # same seeded network
    assert not np.allclose(adam.flow, sgd.flow, atol=1e-4)


def test_momentum_with_adam_is_refused(shifted_pair):
    pc1, pc2 = shifted_pair
    with pytest.raises(PriorlabError, match="momentum.*sgd"):
        estimate_flow(pc1, pc2, "fast", momentum=0.9, max_iters=2, progress=False)
    res = estimate_flow(pc1, pc2, "fast", optimizer="sgd", momentum=0.9, max_iters=2, progress=False)
    assert res.iterations == 2


def test_unknown_optimizer_names_both_choices(shifted_pair):
    pc1, pc2 = shifted_pair
    with pytest.raises(PriorlabError, match="'adam'.*'sgd'"):
        estimate_flow(pc1, pc2, "fast", optimizer="rmsprop", max_iters=2, progress=False)
