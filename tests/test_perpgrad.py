"""perpGrad (Prieto et al., arXiv:2501.04697): the projection on hand examples, and the wrapper."""

import copy
import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.optim.perpgrad import PerpGrad, perp_grad_


def _param(values, grad):
    p = nn.Parameter(torch.tensor(values))
    p.grad = torch.tensor(grad)
    return p


def test_projection_by_hand():
    # w = (3, 4), g = (1, 0): g - (w.g / w.w) w = (1, 0) - 3/25 (3, 4) = (0.64, -0.48), norm 0.8,
    # rescaled to ||g|| = 1: (0.8, -0.6).
    p = _param([3.0, 4.0], [1.0, 0.0])
    perp_grad_([p])
    torch.testing.assert_close(p.grad, torch.tensor([0.8, -0.6]))


def test_projected_gradient_is_orthogonal_with_the_same_norm():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(7, 5))
    p.grad = torch.randn(7, 5) + 0.5 * p.detach()  # a sizeable component along w
    norm_before = p.grad.norm()
    perp_grad_([p])
    assert abs(float((p.grad * p.detach()).sum())) < 1e-5  # whole tensor treated as one vector
    assert math.isclose(float(p.grad.norm()), float(norm_before), rel_tol=1e-6)


def test_gradient_along_the_weights_is_removed_entirely():
    p = _param([1.0, 2.0], [2.0, 4.0])  # g = 2 w: pure naive-loss-minimisation direction
    perp_grad_([p])
    assert torch.equal(p.grad, torch.zeros(2))


def test_zero_weights_leave_the_gradient_unchanged():
    p = _param([0.0, 0.0], [1.0, -2.0])
    perp_grad_([p])
    torch.testing.assert_close(p.grad, torch.tensor([1.0, -2.0]))


def test_parameters_without_gradient_are_skipped_and_half_precision_stays_finite():
    frozen = nn.Parameter(torch.ones(3))
    half = nn.Parameter(torch.tensor([1e-3, 0.0], dtype=torch.float16))
    half.grad = torch.tensor([1e-3, 1e-3], dtype=torch.float16)
    perp_grad_([frozen, half])
    assert frozen.grad is None
    assert torch.isfinite(half.grad).all() and half.grad[0] == 0 and half.grad[1] > 0


def test_wrapper_step_is_base_step_on_projected_gradient():
    # SGD(lr=0.5) on w = (3, 4), g = (1, 0): projected g = (0.8, -0.6) -> w = (2.6, 4.3).
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = PerpGrad(torch.optim.SGD([w], lr=0.5))
    w.grad = torch.tensor([1.0, 0.0])
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.tensor([2.6, 4.3]))


def test_closure_gradients_are_projected():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = PerpGrad(torch.optim.SGD([w], lr=0.5))

    def closure():
        optimizer.zero_grad()
        loss = w[0].clone()  # gradient (1, 0)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 3.0
    torch.testing.assert_close(w.detach(), torch.tensor([2.6, 4.3]))


def _train(model, optimizer, steps):
    torch.manual_seed(1)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = PerpGrad(torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-25))
    _train(model, optimizer, 3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    _train(model, optimizer, 3)

    resumed = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    resumed.load_state_dict(saved_model)
    resumed_opt = PerpGrad(torch.optim.AdamW(resumed.parameters(), lr=1e-2, eps=1e-25))
    resumed_opt.load_state_dict(saved_opt)
    assert resumed_opt.state is resumed_opt.base_optimizer.state
    _train(resumed, resumed_opt, 3)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_deepcopy_gives_an_independent_working_wrapper():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = PerpGrad(torch.optim.SGD([w], lr=0.5))
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups is clone.base_optimizer.param_groups
    assert clone.param_groups[0]["params"][0] is not w
    w.grad = torch.tensor([1.0, 0.0])
    optimizer.step()
    torch.testing.assert_close(w.detach(), torch.tensor([2.6, 4.3]))


def test_param_groups_are_shared_with_the_base_so_schedulers_work():
    w = nn.Parameter(torch.ones(2))
    base = torch.optim.SGD([w], lr=1.0)
    optimizer = PerpGrad(base)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    w.grad = torch.tensor([1.0, 0.0])
    optimizer.step()
    scheduler.step()
    assert math.isclose(base.param_groups[0]["lr"], 0.1)
    optimizer.zero_grad()
    assert w.grad is None


@pytest.mark.parametrize("bad", [
    lambda: PerpGrad(nn.Linear(2, 2)),
    lambda: PerpGrad(torch.optim.SGD),
    lambda: PerpGrad(torch.optim.LBFGS([nn.Parameter(torch.ones(2))])),
    lambda: PerpGrad(torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1), eps=-1.0),
    lambda: perp_grad_([torch.ones(2), "not a tensor"]),
    lambda: perp_grad_([nn.Parameter(torch.ones(2))], eps=float("nan")),
])
def test_bad_arguments_raise(bad):
    with pytest.raises(PriorlabError):
        bad()


# --- non-finite gradients and loaded states (issue 16) ----------------------------------------

def _adamw_perpgrad(**kwargs):
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = PerpGrad(torch.optim.AdamW([w], lr=0.1), **kwargs)
    w.grad = torch.tensor([1.0, 0.0])
    optimizer.step()
    return w, optimizer


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_gradient_skips_the_step_and_keeps_the_base_state(bad):
    w, optimizer = _adamw_perpgrad()
    before_w, before_state = w.detach().clone(), copy.deepcopy(optimizer.state_dict())
    w.grad = torch.tensor([bad, 1.0])
    with pytest.warns(RuntimeWarning, match=r"\(2,\).*skipped"):
        optimizer.step()
    assert torch.equal(w.detach(), before_w)
    for key, value in before_state["state"][0].items():
        assert torch.equal(optimizer.state[w][key], value)
    w.grad = torch.tensor([1.0, 0.0])
    optimizer.step()  # an ordinary step follows: weights and moments stay finite
    assert torch.isfinite(w).all() and torch.isfinite(optimizer.state[w]["exp_avg_sq"]).all()


def test_nonfinite_raise_policy():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))
    optimizer = PerpGrad(torch.optim.SGD([w], lr=0.5), nonfinite="raise")
    w.grad = torch.tensor([math.nan, 0.0])
    with pytest.raises(PriorlabError, match="NaN or infinite"):
        optimizer.step()
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0]))
    with pytest.raises(PriorlabError, match="nonfinite"):
        PerpGrad(torch.optim.SGD([w], lr=0.5), nonfinite="maybe")


@pytest.mark.parametrize("corrupt, words", [
    (lambda sd: sd["param_groups"][0].update(lr=-0.5), "lr"),
    (lambda sd: sd["param_groups"][0].update(momentum=0.9), "another optimizer"),
    # AdamW's own constructor refuses it; the loaded state used to pass and crash the next step
    (lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.5)), "AdamW's checks.*beta"),
    (lambda sd: sd["state"][0].update(exp_avg_sq=torch.tensor([math.nan, 1.0])), "NaN"),
    (lambda sd: sd.update(param_groups="oops"), "param_groups"),
    # was accepted, then the next step crashed with a torch size mismatch
    (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(3)), "shape"),
    (lambda sd: sd["state"].update({7: {}}), "parameter 7"),
])
def test_corrupt_state_dict_is_rejected_and_leaves_the_optimizer_unchanged(corrupt, words):
    w, optimizer = _adamw_perpgrad()
    bad = copy.deepcopy(optimizer.state_dict())
    corrupt(bad)
    with pytest.raises(PriorlabError, match=words):
        optimizer.load_state_dict(bad)
    assert optimizer.param_groups[0]["lr"] == 0.1
    assert optimizer.param_groups is optimizer.base_optimizer.param_groups
