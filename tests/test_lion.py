"""Lion (arXiv:2302.06675): known values, foreach == loop, state, bad input, reproduction smoke."""

import copy
import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.optim.lion import Lion


def _param(values, dtype=torch.float32):
    return nn.Parameter(torch.tensor(values, dtype=dtype))


def _step(optimizer, param, grad):
    param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()


def test_first_step_moves_each_weight_by_lr_against_the_gradient_sign():
    w = _param([0.5, -1.0, 2.0])
    opt = Lion([w], lr=0.1, betas=(0.9, 0.99))
    _step(opt, w, [1.0, -2.0, 3.0])
    # m starts at 0, so c = 0.1 * g and sign(c) = sign(g) = [+, -, +]
    torch.testing.assert_close(w.data, torch.tensor([0.4, -0.9, 1.9]))
    # m = 0.99 * 0 + 0.01 * g
    torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor([0.01, -0.02, 0.03]))


def test_first_step_with_weight_decay_shrinks_weights_before_the_sign_step():
    w = _param([0.5, -1.0, 2.0])
    opt = Lion([w], lr=0.1, weight_decay=0.5)
    _step(opt, w, [1.0, -2.0, 3.0])
    # w * (1 - 0.1 * 0.5) - 0.1 * sign(g) = 0.95 * w - 0.1 * [1, -1, 1]
    torch.testing.assert_close(w.data, torch.tensor([0.375, -0.85, 1.8]))


def test_second_step_takes_the_sign_of_the_interpolated_momentum_not_of_the_gradient():
    w = _param([0.5, -1.0, 2.0])
    opt = Lion([w], lr=0.1, betas=(0.9, 0.99))
    _step(opt, w, [1.0, -2.0, 3.0])  # m = [0.01, -0.02, 0.03], w = [0.4, -0.9, 1.9]
    _step(opt, w, [-0.05, 0.1, -0.5])
    # c = 0.9 * m + 0.1 * g = [0.004, -0.008, -0.023]: signs [+, -, -], while sign(g) = [-, +, -]
    torch.testing.assert_close(w.data, torch.tensor([0.3, -0.8, 2.0]))
    # m = 0.99 * m + 0.01 * g
    torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor([0.0094, -0.0188, 0.0247]))


def _reference_lion(w, grads, lr, beta1, beta2, wd):
    """The official update rule, written out directly."""
    m = torch.zeros_like(w)
    for g in grads:
        w = w * (1 - lr * wd)
        w = w - lr * torch.sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g
    return w, m


def test_many_steps_match_the_official_rule_in_float64():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, dtype=torch.float64, generator=gen)
    grads = [torch.randn(50, dtype=torch.float64, generator=gen) for _ in range(20)]
    w = nn.Parameter(w0.clone())
    opt = Lion([w], lr=0.01, betas=(0.95, 0.98), weight_decay=0.3)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    expected_w, expected_m = _reference_lion(w0, grads, 0.01, 0.95, 0.98, 0.3)
    torch.testing.assert_close(w.data, expected_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(opt.state[w]["exp_avg"], expected_m, rtol=0, atol=1e-12)


def _train_copies(foreach, device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 9), nn.ReLU(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3))
    model.double()[2].float()  # two dtypes, so the foreach path has to bucket them
    model.to(device)
    opt = Lion(model.parameters(), lr=3e-3, weight_decay=0.2, foreach=foreach)
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, dtype=p.dtype, generator=gen).to(device)
        opt.step()
    return model, opt


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a GPU"))])
def test_foreach_and_per_parameter_paths_agree_bit_for_bit(device):
    loop_model, loop_opt = _train_copies(foreach=False, device=device)
    multi_model, multi_opt = _train_copies(foreach=True, device=device)
    for a, b in zip(loop_model.parameters(), multi_model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(loop_opt.state[a]["exp_avg"], multi_opt.state[b]["exp_avg"])


def test_state_is_exactly_one_momentum_buffer_per_parameter():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 2))
    frozen = nn.Parameter(torch.ones(3))  # no gradient: gets no state
    opt = Lion(list(model.parameters()) + [frozen], lr=1e-3)
    model(torch.randn(8, 5)).sum().backward()
    opt.step()
    assert frozen not in opt.state
    for p in model.parameters():
        assert list(opt.state[p]) == ["exp_avg"]
        assert opt.state[p]["exp_avg"].shape == p.shape
    state_bytes = sum(s["exp_avg"].numel() * s["exp_avg"].element_size()
                      for s in opt.state.values())
    assert state_bytes == 4 * sum(p.numel() for p in model.parameters())


def test_closure_is_evaluated_with_gradients_and_its_loss_returned():
    w = _param([1.0, -1.0])
    opt = Lion([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.detach()) == 2.0
    torch.testing.assert_close(w.data, torch.tensor([0.9, -0.9]))


def test_state_dict_round_trip_resumes_exactly():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, generator=gen) for _ in range(8)]
    w = _param([0.1 * i for i in range(6)])
    opt = Lion([w], lr=1e-2, weight_decay=0.1)
    for g in grads[:4]:
        w.grad = g.clone()
        opt.step()
    w_copy = nn.Parameter(w.detach().clone())
    opt_copy = Lion([w_copy], lr=0.5)  # settings come from the state dict
    opt_copy.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert opt_copy.param_groups[0]["lr"] == 1e-2
    for g in grads[4:]:
        w.grad, w_copy.grad = g.clone(), g.clone()
        opt.step()
        opt_copy.step()
    assert torch.equal(w, w_copy)
    assert torch.equal(opt.state[w]["exp_avg"], opt_copy.state[w_copy]["exp_avg"])


@pytest.mark.parametrize("kwargs, words", [
    ({"lr": -1e-4}, "lr"),
    ({"lr": math.nan}, "lr"),
    ({"lr": math.inf}, "lr"),
    ({"betas": (0.9, 1.0)}, "betas"),
    ({"betas": (-0.1, 0.99)}, "betas"),
    ({"betas": (0.9,)}, "betas"),
    ({"betas": (0.9, math.nan)}, "betas"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"weight_decay": math.nan}, "weight_decay"),
    ({"foreach": "yes"}, "foreach"),
])
def test_bad_arguments_raise_one_clear_error(kwargs, words):
    with pytest.raises(PriorlabError, match=words):
        Lion([_param([1.0])], **kwargs)


def test_bad_param_group_is_rejected_and_leaves_the_optimizer_unchanged():
    opt = Lion([_param([1.0])], lr=1e-4)
    with pytest.raises(PriorlabError, match="betas"):
        opt.add_param_group({"params": [_param([2.0])], "betas": (0.9, 1.5)})
    assert len(opt.param_groups) == 1


def test_sparse_gradients_raise():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = Lion(emb.parameters(), lr=1e-3)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(PriorlabError, match="sparse"):
        opt.step()


def test_card_is_registered_with_its_reproduction():
    from priorlab import registry

    card = registry.get("lion")
    assert card.component is Lion and card.seed_id == 65 and card.kind == "optimizer"
    assert card.reproduction == "p065_lion"
    example = card.example()
    for bad in example.bad_args:
        with pytest.raises(PriorlabError):
            bad()
    exec(compile(card.usage, "<lion usage>", "exec"), {})


def test_reproduction_smoke_every_arm_gives_finite_complete_metrics():
    from priorlab.reproductions import p065_lion as repro

    cfg = repro.CLAIM.tiers["smoke"]
    expected = {repro.CLAIM.metric, *repro.CLAIM.extra_metrics, *(g.metric for g in repro.CLAIM.guards)}
    for arm in repro.CLAIM.arms:
        out = repro.run(arm, cfg, seed=0)
        assert set(out.metrics) == expected
        assert all(math.isfinite(v) for v in out.metrics.values())
        optimizer, batch_size = arm.split("_b")
        # the declared grid, extended a half-decade when the best lr sits on its edge
        swept = [entry["lr"] for entry in out.info["sweep"]]
        assert set(repro.LR_GRID[(optimizer, int(batch_size))]) <= set(swept)
        assert out.metrics["selected_lr"] in swept and out.metrics["grid_size"] == len(swept)
        # Lion keeps one fp32 buffer per weight; AdamW two (plus a scalar step count per tensor)
        bytes_per_param = out.metrics["state_bytes_per_param"]
        if optimizer == "lion":
            assert bytes_per_param == 4.0
        else:
            assert 8.0 <= bytes_per_param < 8.1
        curve = out.curves["val_acc"]
        assert len(curve["x"]) == len(curve["y"]) == cfg["epochs"]
    first = repro.run(repro.CLAIM.arms[1], cfg, seed=0)
    again = repro.run(repro.CLAIM.arms[1], cfg, seed=0)
    assert again.metrics == first.metrics


# --- non-finite gradients (issue 16): a NaN must not freeze Lion for good ---------------------

@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_gradient_skips_the_group_step_and_keeps_the_state(foreach, bad):
    w, other = _param([0.5, -1.0, 2.0]), _param([[1.0, 2.0]])
    opt = Lion([w, other], lr=0.1, foreach=foreach)
    _step(opt, w, [1.0, -2.0, 3.0])  # m = [0.01, -0.02, 0.03], w = [0.4, -0.9, 1.9]
    w.grad, other.grad = torch.tensor([1.0, bad, 3.0]), torch.tensor([[1.0, 1.0]])
    with pytest.warns(RuntimeWarning, match=r"\(3,\).*skipped"):
        opt.step()
    torch.testing.assert_close(w.data, torch.tensor([0.4, -0.9, 1.9]))
    torch.testing.assert_close(opt.state[w]["exp_avg"], torch.tensor([0.01, -0.02, 0.03]))
    assert torch.equal(other.data, torch.tensor([[1.0, 2.0]]))  # the whole group is skipped
    assert other not in opt.state
    # the next finite step is an ordinary Lion step (before the fix the momentum held NaN and
    # sign(NaN) = 0 kept that coordinate frozen forever)
    _step(opt, w, [-0.05, 0.1, -0.5])
    torch.testing.assert_close(w.data, torch.tensor([0.3, -0.8, 2.0]))
    assert torch.isfinite(opt.state[w]["exp_avg"]).all()


def test_nonfinite_gradient_skips_only_its_own_param_group():
    w, v = _param([1.0]), _param([1.0])
    opt = Lion([{"params": [w]}, {"params": [v]}], lr=0.1)
    w.grad, v.grad = torch.tensor([math.nan]), torch.tensor([1.0])
    with pytest.warns(RuntimeWarning):
        opt.step()
    assert w.item() == 1.0 and math.isclose(v.item(), 0.9, rel_tol=1e-6)


def test_nonfinite_raise_policy_raises_and_changes_nothing():
    w = _param([0.5, -1.0])
    opt = Lion([w], lr=0.1, nonfinite="raise")
    w.grad = torch.tensor([math.nan, 1.0])
    with pytest.raises(PriorlabError, match=r"NaN or infinite gradient.*\(2,\)"):
        opt.step()
    assert torch.equal(w.data, torch.tensor([0.5, -1.0])) and not opt.state


def test_unknown_nonfinite_policy_is_rejected():
    with pytest.raises(PriorlabError, match="nonfinite"):
        Lion([_param([1.0])], nonfinite="ignore")


# --- load_state_dict runs the constructor's checks (issue 16) ---------------------------------

def _trained_lion(**kwargs):
    w = _param([1.0, 2.0])
    opt = Lion([w], lr=1e-2, **kwargs)
    _step(opt, w, [1.0, -1.0])
    return w, opt


@pytest.mark.parametrize("corrupt, words", [
    (lambda sd: sd["param_groups"][0].update(lr=-0.5), "lr"),
    (lambda sd: sd["param_groups"][0].update(betas=(0.9, 1.2)), "betas"),
    (lambda sd: sd["param_groups"][0].update(weight_decay=math.nan), "weight_decay"),
    (lambda sd: sd["param_groups"][0].update(nonfinite="ignore"), "nonfinite"),
    (lambda sd: sd["state"][0].update(exp_avg=torch.tensor([math.nan, 0.0])), "NaN"),
    (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(3)), "exp_avg"),
    (lambda sd: sd["state"][0].update(step=torch.tensor(1.0)), "exp_avg"),
    (lambda sd: sd.pop("state"), "state"),
    (lambda sd: sd["param_groups"].append({"params": []}), "group"),
])
def test_corrupt_state_dict_is_rejected_and_leaves_the_optimizer_unchanged(corrupt, words):
    w, opt = _trained_lion()
    saved = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(saved)
    corrupt(bad)
    with pytest.raises(PriorlabError, match=words):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["lr"] == 1e-2
    assert torch.equal(opt.state[w]["exp_avg"], saved["state"][0]["exp_avg"])


@pytest.mark.parametrize("stepped", [False, True])
def test_an_adamw_state_does_not_load_into_lion(stepped):
    w = _param([1.0, 2.0])
    adamw = torch.optim.AdamW([w], lr=1e-3)
    if stepped:
        _step(adamw, w, [1.0, -1.0])
    opt = Lion([w], lr=1e-4)
    with pytest.raises(PriorlabError, match="another optimizer"):
        opt.load_state_dict(adamw.state_dict())
    assert opt.param_groups[0]["lr"] == 1e-4


def test_a_state_saved_before_the_nonfinite_option_still_loads():
    w, opt = _trained_lion()
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:
        del group["nonfinite"], group["foreach"]
    fresh = Lion([_param([1.0, 2.0])], lr=0.5)
    fresh.load_state_dict(old)
    assert fresh.param_groups[0]["nonfinite"] == "skip" and fresh.param_groups[0]["lr"] == 1e-2


def test_a_scheduler_state_key_is_not_mistaken_for_another_optimizer():
    w, opt = _trained_lion()
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=10)  # adds keys to groups
    clone = Lion([_param([1.0, 2.0])], lr=0.5)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert clone.param_groups[0]["max_lr"] == 1e-2
