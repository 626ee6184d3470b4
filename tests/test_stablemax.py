"""StableMax (Prieto et al., arXiv:2501.04697): values worked out by hand, dtype behaviour, bad
input, the modular-addition data and the reproduction's smoke tier."""

import math

import pytest
import torch

from priorlab.data.modular import modular_addition
from priorlab.errors import PriorlabError
from priorlab.nn.stablemax import (
    StableMax,
    log_stablemax,
    stablemax,
    stablemax_cross_entropy,
)
from priorlab.reproductions import p062_stablemax


def test_stablemax_by_hand():
    # s(0) = 1, s(1) = 2, s(-1) = 1/2; total 3.5
    probs = stablemax(torch.tensor([0.0, 1.0, -1.0]))
    torch.testing.assert_close(probs, torch.tensor([1.0, 2.0, 0.5]) / 3.5)
    assert probs.dtype == torch.float32


def test_stablemax_along_a_chosen_dim():
    x = torch.tensor([[0.0, 2.0], [1.0, -3.0]])  # columns: s = (1, 2) and (3, 1/4)
    probs = stablemax(x, dim=0)
    torch.testing.assert_close(probs, torch.tensor([[1 / 3, 3 / 3.25], [2 / 3, 0.25 / 3.25]]))


def test_cross_entropy_value_and_gradient_by_hand():
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    loss = stablemax_cross_entropy(logits, torch.tensor([1]))
    assert math.isclose(loss.item(), math.log(3.5 / 2), rel_tol=1e-6)
    loss.backward()
    # d/dx_k [-log s_y + log S] = -[k=y] s'(x_y)/s_y + s'(x_k)/S, s'(x) = 1 (x >= 0), 1/(1-x)^2 (x < 0)
    expected = torch.tensor([[1 / 3.5, -1 / 2 + 1 / 3.5, 0.25 / 3.5]])
    torch.testing.assert_close(logits.grad, expected)


def test_reductions():
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.0, 1.0, -1.0]])
    targets = torch.tensor([1, 2])
    per_sample = stablemax_cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(per_sample, torch.tensor([math.log(1.75), math.log(7.0)]))
    torch.testing.assert_close(stablemax_cross_entropy(logits, targets, reduction="sum"),
                               per_sample.sum())
    torch.testing.assert_close(stablemax_cross_entropy(logits, targets), per_sample.mean())


def test_float64_path_keeps_what_float32_would_absorb():
    # s = (1e8 + 1, 1): log p_0 = -log(1 + 1/(1e8 + 1)) ~ -1e-8. float32 rounds 1e8 + 2 to 1e8 + 1
    # ... to 1e8, so computing in float32 gives exactly 0; the float64 path keeps -1e-8 and
    # returns it in the input's float32.
    x = torch.tensor([1e8, 0.0])
    assert log_stablemax(x, dtype=torch.float32)[0] == 0
    out = log_stablemax(x)
    assert out.dtype == torch.float32
    assert math.isclose(float(out[0]), -1e-8, rel_tol=1e-3)
    assert log_stablemax(x.double()).dtype == torch.float64


def test_gradient_finite_at_branch_point_and_for_large_logits():
    x = torch.tensor([[1.0, 0.0, -1e6, 1e6]], requires_grad=True)
    stablemax_cross_entropy(x, torch.tensor([0]), dtype=torch.float32).backward()
    assert torch.isfinite(x.grad).all()


def test_module_gives_hand_computed_values():
    # s(1) = 2, s(0) = 1, s(-1) = 1/2, s(3) = 4
    x = torch.tensor([[1.0, 0.0, -1.0], [3.0, -1.0, 0.0]])
    expected = torch.tensor([[2 / 3.5, 1 / 3.5, 0.5 / 3.5], [4 / 5.5, 0.5 / 5.5, 1 / 5.5]])
    out = StableMax()(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    # along dim 0: columns (2, 4), (1, 1/2), (1/2, 1)
    by_column = torch.tensor([[2 / 6, 1 / 1.5, 0.5 / 1.5], [4 / 6, 0.5 / 1.5, 1 / 1.5]])
    torch.testing.assert_close(StableMax(dim=0, log=True)(x), by_column.log())
    assert "log=True" in repr(StableMax(log=True))


def test_module_computes_in_its_compute_dtype():
    # log StableMax([1e8, 0])[0] = -log1p(1e-8 / (1 + 1e-8)) ~ -1e-8: float64 keeps it, float32 not
    x = torch.tensor([1e8, 0.0])
    assert math.isclose(float(StableMax(log=True)(x)[0]), -1e-8, rel_tol=1e-3)
    assert float(StableMax(log=True, compute_dtype=torch.float32)(x)[0]) == 0.0


@pytest.mark.parametrize("bad", [
    lambda: stablemax(torch.tensor([0, 1, 2])),
    lambda: stablemax(torch.tensor(1.0)),
    lambda: stablemax(torch.zeros(2, 3), dim=2),
    lambda: log_stablemax(torch.tensor([0.0, float("inf")])),
    lambda: stablemax(torch.zeros(3), dtype=torch.int64),
    lambda: stablemax_cross_entropy(torch.zeros(2, 3), torch.tensor([0.0, 1.0])),
    lambda: stablemax_cross_entropy(torch.zeros(2, 3), torch.tensor([[0], [1]])),
    lambda: stablemax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3])),
    lambda: stablemax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, -1])),
    lambda: stablemax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), reduction="avg"),
    lambda: stablemax_cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
    lambda: StableMax(compute_dtype=torch.int32),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_modular_addition_encoding_and_split():
    data = modular_addition(7, train_fraction=0.4, seed=3)
    assert data.train_inputs.shape == (int(0.4 * 49), 14) and len(data.test_targets) == 49 - 19
    x = torch.cat([data.train_inputs, data.test_inputs])
    pairs = torch.cat([data.train_pairs, data.test_pairs])
    a, b = x[:, :7].argmax(1), x[:, 7:].argmax(1)
    assert torch.equal(torch.stack([a, b], 1), pairs) and torch.equal(x.sum(1), torch.full((49,), 2.0))
    assert torch.equal(torch.cat([data.train_targets, data.test_targets]), (a + b) % 7)
    assert len({tuple(p) for p in pairs.tolist()}) == 49  # every pair exactly once
    again = modular_addition(7, train_fraction=0.4, seed=3)
    other = modular_addition(7, train_fraction=0.4, seed=4)
    assert torch.equal(again.train_pairs, data.train_pairs)
    assert not torch.equal(other.train_pairs, data.train_pairs)


@pytest.mark.parametrize("bad", [
    lambda: modular_addition(1),
    lambda: modular_addition(7.0),
    lambda: modular_addition(7, train_fraction=1.0),
    lambda: modular_addition(7, train_fraction=0.01),
    lambda: modular_addition(7, dtype=torch.int64),
])
def test_modular_addition_bad_args(bad):
    with pytest.raises(PriorlabError):
        bad()


@pytest.mark.parametrize("arm", p062_stablemax.CLAIM.arms)
def test_reproduction_smoke_tier_runs(arm):
    cfg = p062_stablemax.CLAIM.tiers["smoke"]
    out = p062_stablemax.run(arm, dict(cfg), seed=0)
    wanted = {p062_stablemax.CLAIM.metric, *p062_stablemax.CLAIM.extra_metrics}
    assert wanted <= set(out.metrics)
    assert all(math.isfinite(v) for v in out.metrics.values())
    assert out.metrics["train_acc"] == 1.0  # every arm fits this small training set
    for name in p062_stablemax.CLAIM.curves:
        assert len(out.curves[name]["x"]) == len(out.curves[name]["y"]) > 3
    assert out.curves["test_acc"]["x"][-1] == out.metrics["epochs"]


def test_reproduction_rejects_unknown_arm():
    with pytest.raises(PriorlabError):
        p062_stablemax.run("softmax", dict(p062_stablemax.CLAIM.tiers["smoke"]), seed=0)


@pytest.mark.parametrize("bad", [
    lambda: stablemax(torch.zeros(2, 3), dim="1"),      # was a TypeError from a comparison
    lambda: log_stablemax(torch.zeros(2, 3), dim=1.0),
    lambda: StableMax(dim=None),
])
def test_dim_must_be_an_integer(bad):
    with pytest.raises(PriorlabError, match="dim must be an integer"):
        bad()


def test_empty_batch_error_names_the_logits():
    with pytest.raises(PriorlabError, match="empty batch.*logits"):
        stablemax_cross_entropy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
