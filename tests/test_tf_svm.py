"""Single-head attention, the Att-SVM solver and the seed-23 reproduction."""

import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.nn.attention_svm import (NormalizedGD, SingleHeadAttention, _constraint_rows,
                                       att_svm, direction_cosine)

HAS_CVXPY = importlib.util.find_spec("cvxpy") is not None
needs_cvxpy = pytest.mark.skipif(not HAS_CVXPY, reason="needs cvxpy (pip install priorlab[svm])")



def _problem(seed=0, n=10, T=5, d=6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, T, d, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=-1, keepdim=True)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    opt = torch.randint(0, T, (n,), generator=g)
    return X, z, opt


def _margins(X, z, opt, W):
    diffs, queries = _constraint_rows(X.numpy(), z.numpy(), opt.numpy())
    return np.sum((diffs @ W.numpy()) * queries, axis=1), diffs, queries


def test_forward_matches_the_formula_by_hand():
    model = SingleHeadAttention(2, "W", head=torch.tensor([1.0, 2.0], dtype=torch.float64))
    X = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        model.W.zero_()
        # W = 0: uniform attention, f = mean of the token values X v = (1 + 2) / 2
        assert model(X, z).item() == pytest.approx(1.5)
        model.W.copy_(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]))
        # scores x_t^T W z = (log 3, 0): attention (3/4, 1/4), f = 3/4 * 1 + 1/4 * 2
        assert model.attention(X, z)[0].tolist() == pytest.approx([0.75, 0.25])
        assert model(X, z).item() == pytest.approx(1.25)


def test_kq_parametrisation_uses_k_q_transpose():
    torch.manual_seed(0)
    model = SingleHeadAttention(3, "KQ", key_dim=2)
    assert model.K.shape == model.Q.shape == (3, 2)
    torch.testing.assert_close(model.combined_weight(), model.K @ model.Q.T)
    assert set(dict(model.named_parameters())) == {"K", "Q"}


def test_self_attention_defaults_to_the_last_token():
    torch.manual_seed(0)
    model = SingleHeadAttention(4)
    X, _, _ = _problem(T=3, d=4)
    torch.testing.assert_close(model(X), model(X, X[:, -1]))


def test_normalized_gd_moves_each_tensor_by_exactly_lr_and_leaves_the_head():
    torch.manual_seed(0)
    model = SingleHeadAttention(6, "KQ")
    X, z, _ = _problem()
    y = torch.where(torch.arange(10) % 2 == 0, 1.0, -1.0).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = NormalizedGD(model.parameters(), lr=0.1)
    F.softplus(-y * model(X, z)).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    for name in ("K", "Q"):
        moved = float((getattr(model, name).detach() - before[name]).norm())
        assert moved == pytest.approx(0.1, rel=1e-9)
    assert torch.equal(model.v, before["v"])


def test_state_dict_round_trip_keeps_the_head():
    torch.manual_seed(0)
    model = SingleHeadAttention(4, "W")
    torch.manual_seed(1)
    other = SingleHeadAttention(4, "W")
    other.load_state_dict(model.state_dict())
    X, z, _ = _problem(d=4)
    torch.testing.assert_close(other(X, z), model(X, z))


def test_att_svm_hand_worked_one_constraint():
    # one sequence, tokens e1 and 0, query e2: the only constraint is W[0, 1] >= 1
    X = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    z = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(att_svm(X, z, [0], norm="fro"), expected, atol=1e-10, rtol=0)
    if HAS_CVXPY:
        torch.testing.assert_close(att_svm(X, z, [0], norm="nuc"), expected, atol=1e-6, rtol=0)


def test_frobenius_solution_satisfies_the_kkt_conditions():
    X, z, opt = _problem(seed=3)
    W = att_svm(X, z, opt, norm="fro")
    margins, diffs, queries = _margins(X, z, opt, W)
    assert margins.min() >= 1 - 1e-9  # feasible
    active = margins < 1 + 1e-7
    # stationarity: W is a non-negative combination of the active constraints' gradients
    A = np.einsum("ka,kb->kab", diffs[active], queries[active]).reshape(int(active.sum()), -1)
    alpha, *_ = np.linalg.lstsq(A.T, W.numpy().ravel(), rcond=None)
    assert np.abs(A.T @ alpha - W.numpy().ravel()).max() < 1e-8
    assert alpha.min() > -1e-8


@needs_cvxpy
def test_frobenius_solver_agrees_with_cvxpy_and_norms_differ_as_they_should():
    import cvxpy as cp

    X, z, opt = _problem(seed=1)
    fro, nuc = att_svm(X, z, opt, "fro"), att_svm(X, z, opt, "nuc")
    _, diffs, queries = _margins(X, z, opt, fro)
    V = cp.Variable((6, 6))
    cp.Problem(cp.Minimize(cp.norm(V, "fro")),
               [cp.sum(cp.multiply(diffs @ V, queries), axis=1) >= 1]).solve()
    assert direction_cosine(fro, torch.from_numpy(V.value)) > 1 - 1e-7
    # each solution is optimal for its own norm
    assert torch.linalg.matrix_norm(fro) <= torch.linalg.matrix_norm(nuc) + 1e-6
    assert torch.linalg.matrix_norm(nuc, "nuc") <= torch.linalg.matrix_norm(fro, "nuc") + 1e-5
    assert _margins(X, z, opt, nuc)[0].min() >= 1 - 1e-5


def test_att_svm_reports_infeasible_selections():
    # two identical tokens cannot be separated
    X = torch.ones(1, 2, 3, dtype=torch.float64)
    with pytest.raises(PriorlabError, match="separates"):
        att_svm(X, torch.ones(1, 3, dtype=torch.float64), [0])


def test_gd_direction_approaches_the_frobenius_svm():
    X, z, _ = _problem(seed=2)
    y = torch.where(torch.randn(10, generator=torch.Generator().manual_seed(5)) > 0, 1.0, -1.0)
    torch.manual_seed(0)
    model = SingleHeadAttention(6, "W")
    optimizer = NormalizedGD(model.parameters(), lr=0.1)
    cosines = []
    for step in range(600):
        optimizer.zero_grad()
        F.softplus(-y.double() * model(X, z)).mean().backward()
        optimizer.step()
        if step in (49, 599):
            selected = model.attention(X, z).argmax(-1)
            svm = att_svm(X, z, selected)
            cosines.append(direction_cosine(model.combined_weight(), svm))
    assert cosines[1] > cosines[0] and cosines[1] > 0.95


def test_direction_cosine_values_and_errors():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert direction_cosine(a, 3 * a) == pytest.approx(1.0)
    assert direction_cosine(a, -a) == pytest.approx(-1.0)
    assert direction_cosine(a, torch.tensor([[0.0, 1.0], [0.0, 0.0]])) == pytest.approx(0.0)
    with pytest.raises(PriorlabError):
        direction_cosine(a, torch.ones(3))
    with pytest.raises(PriorlabError):
        direction_cosine(a, torch.full((2, 2), float("nan")))


@pytest.mark.parametrize("bad", [
    lambda: SingleHeadAttention(3, parametrisation="Wq"),
    lambda: SingleHeadAttention(3, key_dim=0),
    lambda: SingleHeadAttention(3, dtype=torch.int64),
    lambda: SingleHeadAttention(3)(torch.ones(2, 4)),
    lambda: SingleHeadAttention(3)(torch.ones(2, 4, 3, dtype=torch.long)),
    lambda: SingleHeadAttention(3)(torch.full((2, 4, 3), float("inf"))),
    lambda: att_svm(torch.ones(2, 1, 3), None, [0, 0]),
    lambda: att_svm(torch.randn(2, 3, 3), None, [0.0, 1.0]),
    lambda: att_svm(torch.randn(2, 3, 3), None, [0, -1]),
    lambda: NormalizedGD([torch.nn.Parameter(torch.ones(2))], lr=float("nan")),
    lambda: NormalizedGD([{"params": [torch.nn.Parameter(torch.ones(2))], "lr": 0.0}]),
])
def test_bad_input_raises_priorlab_error(bad):
    with pytest.raises(PriorlabError):
        bad()


@needs_cvxpy
def test_reproduction_smoke_runs_every_arm():
    from priorlab.reproductions import p023_tf_svm as repro

    cfg = repro.CLAIM.tiers["smoke"]
    outs = {arm: repro.run(arm, cfg, seed=0) for arm in repro.CLAIM.arms}
    for arm, out in outs.items():
        assert repro.CLAIM.metric in out.metrics
        assert all(math.isfinite(v) for v in out.metrics.values())
        if arm != repro.BAR_ARM:
            curve = out.curves["svm_cosine"]
            assert len(curve["x"]) == len(curve["y"]) == cfg["steps"] // cfg["record_every"] + 1
            assert -1.0 <= out.metrics["svm_cosine"] <= 1.0
    # every comparison's arms score different things at the same seed
    for comparison in repro.CLAIM.comparisons:
        assert (outs[comparison.method].metrics["svm_cosine"]
                != outs[comparison.baseline].metrics["svm_cosine"])
    # one parametrisation, two SVMs: the same trained W, scored against both
    w_fro, w_nuc = outs["W_to_fro"].metrics, outs["W_to_nuc"].metrics
    assert w_fro["weight_norm"] == w_nuc["weight_norm"]
    assert w_fro["svm_pair_cosine"] == w_nuc["svm_pair_cosine"] < 1.0
    # the two parametrisations train different weights from the same data
    assert outs["KQ_to_nuc"].metrics["weight_norm"] != w_fro["weight_norm"]
    assert outs[repro.BAR_ARM].metrics["svm_cosine"] == repro.PAPER_BAR
    with pytest.raises(PriorlabError):
        repro.run("W_to_frob", cfg, seed=0)


# ------------------------------------------------------------------ issue 16: named errors, NaN gradients

def test_direction_cosine_shape_error_names_a_and_b():
    with pytest.raises(PriorlabError, match=r"^direction_cosine: a and b must have one shape"):
        direction_cosine(torch.ones(2, 2), torch.ones(3))


def test_direction_cosine_extreme_magnitudes():
    # the norms' product overflowed float64 (cosine 0) or underflowed to a "zero tensor"
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    assert direction_cosine(a * 1e200, b * 1e200) == pytest.approx(direction_cosine(a, b), rel=1e-12)
    assert direction_cosine(a * 1e-200, b * 1e-200) == pytest.approx(direction_cosine(a, b), rel=1e-12)


def _normalized_gd_after_two_steps(**kwargs):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]
    optimizer = NormalizedGD(params, lr=0.1, **kwargs)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    return params, optimizer


def test_normalized_gd_skips_a_nonfinite_gradient_with_a_warning():
    # the weights turned NaN
    params, optimizer = _normalized_gd_after_two_steps()
    before = [p.detach().clone() for p in params]
    params[0].grad[1] = float("nan")
    with pytest.warns(RuntimeWarning, match="NormalizedGD: NaN or infinite gradient .* skipped") as caught:
        optimizer.step()
    assert caught[0].filename == __file__  # points at the caller's step()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    params[0].grad = torch.ones(3)
    optimizer.step()
    assert torch.allclose(params[0], before[0] - 0.1 / math.sqrt(3))


def test_normalized_gd_can_raise_on_a_nonfinite_gradient():
    params, optimizer = _normalized_gd_after_two_steps(nonfinite="raise")
    params[1].grad[0, 0] = float("inf")
    with pytest.raises(PriorlabError, match="NormalizedGD: NaN or infinite gradient"):
        optimizer.step()
    with pytest.raises(PriorlabError, match="nonfinite"):
        NormalizedGD(params, nonfinite="ignore")


def test_normalized_gd_moves_by_lr_for_huge_finite_gradients():
    # ||g|| of 1e30 entries overflowed float32 to inf, so the step was a silent 0
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = NormalizedGD([p], lr=0.1)
    p.grad = torch.full((4,), 1e30)
    optimizer.step()
    assert torch.allclose(p.detach(), torch.full((4,), -0.05))


def _adamw_state(count):
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(count)]
    adamw = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones(2)
    adamw.step()
    return adamw.state_dict()


@pytest.mark.parametrize("corrupt", [
    lambda sd: sd["param_groups"][0].update(lr=float("nan")),
    lambda sd: sd["param_groups"][0].update(lr=None),
    lambda sd: sd.pop("state"),
    lambda sd: sd["param_groups"][0].update(params=sd["param_groups"][0]["params"][1:]),
    lambda sd: sd.update(_adamw_state(2)),
], ids=["nan lr", "lr None", "no state", "short group", "adamw state"])
def test_normalized_gd_load_state_dict_checks_like_init(corrupt):
    # accepted silently (NaN lr, AdamW) or raised TypeError/KeyError/ValueError
    _, source = _normalized_gd_after_two_steps()
    saved = source.state_dict()
    corrupt(saved)
    params, optimizer = _normalized_gd_after_two_steps()
    groups = [dict(g) for g in optimizer.param_groups]
    with pytest.raises(PriorlabError, match=r"^NormalizedGD"):
        optimizer.load_state_dict(saved)
    assert [dict(g) for g in optimizer.param_groups] == groups


def test_normalized_gd_reloads_its_own_and_an_older_state():
    _, source = _normalized_gd_after_two_steps(nonfinite="raise")
    saved = source.state_dict()
    _, optimizer = _normalized_gd_after_two_steps()
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["nonfinite"] == "raise"
    del saved["param_groups"][0]["nonfinite"]  # saved before the option existed
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["nonfinite"] == "skip"
