"""GG priors (seed 47): GG moments, init, shape estimation, BackSlash, DeepShape, repro smoke."""

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.gg_prior import (
    SHAPE_SEARCH,
    backslash_penalty,
    deepshape_,
    estimate_gg_shape,
    gg_init_,
    gg_moment_ratio,
    gg_quantile,
    gg_scale,
    prune_smallest_,
)
from priorlab.hooks import StepContext
from priorlab.methods.gg_prior import BackSlash
from priorlab.registry import get
from priorlab.reproductions import p047_gg_prior
from priorlab.train import fit



def test_moment_ratio_and_scale_known_values():
    # Laplace: (E|w|)^2 / E w^2 = a^2 / 2a^2; Gaussian: (sigma sqrt(2/pi))^2 / sigma^2
    assert gg_moment_ratio(1.0) == pytest.approx(0.5)
    assert gg_moment_ratio(2.0) == pytest.approx(2 / math.pi)
    assert gg_moment_ratio(200.0) == pytest.approx(0.75, abs=2e-3)  # uniform limit
    # Gaussian: a = sigma sqrt(2); Laplace: var = 2 a^2
    assert gg_scale(0.3, 2.0) == pytest.approx(0.3 * math.sqrt(2))
    assert gg_scale(0.3, 1.0) == pytest.approx(0.3 / math.sqrt(2))


def test_quantiles_match_known_distributions():
    p = torch.tensor([0.1, 0.5, 0.975]).numpy()
    # Gaussian std 1: z-scores; Laplace std 1 (b = 1/sqrt 2): q(0.1) = b ln(0.2)
    assert gg_quantile(p, 2.0) == pytest.approx([-1.2815516, 0.0, 1.9599640], abs=1e-6)
    assert gg_quantile(p, 1.0)[0] == pytest.approx(math.log(0.2) / math.sqrt(2))


@pytest.mark.parametrize("shape", [0.5, 1.0, 2.0])
def test_gg_init_has_target_std_and_shape(shape):
    w = torch.empty(400, 500)
    gg_init_(w, shape, std=0.05, generator=torch.Generator().manual_seed(0))
    assert float(w.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(w.std()) == pytest.approx(0.05, rel=0.02)
    assert estimate_gg_shape(w) == pytest.approx(shape, rel=0.05)


def test_gg_init_default_std_matches_pytorch_default_and_is_reproducible():
    layer = nn.Linear(300, 200)
    torch_std = float(layer.weight.detach().std())
    a, b = torch.empty(200, 300), torch.empty(200, 300)
    gg_init_(a, 1.0, generator=torch.Generator().manual_seed(3))
    gg_init_(b, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert float(a.std()) == pytest.approx(1 / math.sqrt(3 * 300), rel=0.03)
    assert float(a.std()) == pytest.approx(torch_std, rel=0.03)
    conv = torch.empty(8, 4, 3, 3)  # fan_in = 36
    gg_init_(conv, 1.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(conv).all()


def test_estimate_shape_of_known_samples():
    g = torch.Generator().manual_seed(0)
    gaussian = torch.randn(200_000, generator=g)
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((200_000,))
    uniform = torch.rand(200_000, generator=g)
    assert estimate_gg_shape(gaussian) == pytest.approx(2.0, rel=0.04)
    assert estimate_gg_shape(laplace) == pytest.approx(1.0, rel=0.04)
    assert estimate_gg_shape(uniform) > 10
    assert estimate_gg_shape([gaussian[:1000], gaussian[1000:]]) == pytest.approx(
        estimate_gg_shape(gaussian))
    # a two-point distribution has ratio 1 > 3/4: the top of the search range
    assert estimate_gg_shape(torch.tensor([-1.0, 1.0] * 50)) == SHAPE_SEARCH[1]
    # one spike among n zeros: ratio ~ 4/n, below the bottom's 2.5e-5
    spike = torch.zeros(1_000_000)
    spike[0] = 1.0
    assert estimate_gg_shape(spike) == SHAPE_SEARCH[0]


def test_backslash_penalty_known_values_and_gradients():
    w = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    v = torch.tensor([[0.5]], requires_grad=True)
    assert backslash_penalty([w], 0.5, 1.0).item() == pytest.approx(0.5 * 3)
    assert backslash_penalty([w], 0.5, 2.0).item() == pytest.approx(0.5 * 5)
    # one shape per tensor: 1 + 2 (nu=1) + 0.5^3 (nu=3)
    assert backslash_penalty([w, v], 1.0, [1.0, 3.0]).item() == pytest.approx(3.125)
    penalty = backslash_penalty([w], 1.0, 0.5)
    (grad,) = torch.autograd.grad(penalty, w)
    # d |w|^0.5 = 0.5 |w|^-0.5 sign(w); exact zero gets 0, not inf
    torch.testing.assert_close(grad, torch.tensor([0.5, -0.5 / math.sqrt(2), 0.0]))
    zero = backslash_penalty([w], 0.0, 0.5)
    assert float(zero) == 0.0 and not zero.requires_grad


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))


def test_backslash_adapter_refits_shapes_every_k_steps_and_penalises_only_matrices():
    model, (x, y) = _net(), _data()
    adapter = BackSlash(lam=1e-2, update_every=3)
    adapter.setup(model, None)
    assert [p.shape for p in adapter.params] == [torch.Size([32, 10]), torch.Size([3, 32])]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = [list(adapter.nus)]
    ctx = StepContext(model=model, optimizer=optimizer)
    for _ in range(6):
        terms = adapter.loss_terms(ctx)
        loss = nn.functional.cross_entropy(model(x), y) + terms["backslash"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        adapter.after_step(ctx)
        seen.append(list(adapter.nus))
    assert seen[0] == seen[1] == seen[2] != seen[3] == seen[4] == seen[5] != seen[6]
    assert adapter.nus == [estimate_gg_shape(p) for p in adapter.params]  # refit at step 6
    fixed = BackSlash(lam=1e-2, nu=1.0, update_every=1)
    fixed.setup(_net(), None)
    assert fixed.nus == [1.0, 1.0]
    fixed.after_step(ctx)
    assert fixed.nus == [1.0, 1.0]


def test_backslash_term_is_logged_and_sparsifies():
    x, y = _data()
    norms = {}
    for lam in (0.0, 3e-3):
        model = _net()
        history = fit(model, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.2),
                      nn.functional.cross_entropy, epochs=30,
                      adapters=[BackSlash(lam=lam, update_every=5)], show_progress=False)
        assert "loss/backslash" in history
        norms[lam] = sum(p.detach().abs().sum().item() for p in model.parameters() if p.dim() >= 2)
    assert norms[3e-3] < norms[0.0]


def test_backslash_state_dict_round_trip_and_mismatch():
    adapter = BackSlash(lam=1e-3, update_every=2)
    adapter.setup(_net(), None)
    adapter.steps = 5
    state = adapter.state_dict()
    other = BackSlash(lam=1e-3, update_every=2)
    other.load_state_dict(state)
    other.setup(_net(), None)
    assert other.nus == adapter.nus and other.steps == 5
    wrong = BackSlash(lam=1e-3)
    wrong.load_state_dict({"nus": [1.0], "steps": 0})
    with pytest.raises(PriorlabError, match="another model"):
        wrong.setup(_net(), None)


def test_deepshape_keeps_order_mean_std_and_reaches_shape():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(300, 300, generator=g) * 0.2 + 0.05  # uniform: shape ~ inf
    original = w.clone()
    deepshape_(w, 0.7)
    order = torch.argsort(original.flatten(), stable=True)
    assert (w.flatten()[order].diff() >= 0).all()  # the ranking of the weights is kept
    assert float(w.mean()) == pytest.approx(float(original.mean()), abs=1e-4)
    assert float(w.std()) == pytest.approx(float(original.std()), rel=1e-3)
    assert estimate_gg_shape(w) == pytest.approx(0.7, rel=0.03)
    half = original.clone()
    deepshape_(half, 0.7, strength=0.5)
    torch.testing.assert_close(half, (original + w) / 2)
    untouched = original.clone()
    deepshape_(untouched, 0.7, strength=0.0)
    assert torch.equal(untouched, original)


def test_prune_smallest_zeroes_exactly_the_smallest_fraction():
    a = torch.tensor([[0.1, -3.0], [0.5, -0.2]])
    b = torch.tensor([5.0, -1.0, 0.0, 2.0])
    assert prune_smallest_([a, b], 0.5) == 4
    assert torch.equal(a, torch.tensor([[0.0, -3.0], [0.5, 0.0]]))
    assert torch.equal(b, torch.tensor([5.0, 0.0, 0.0, 2.0]))
    with pytest.raises(PriorlabError):
        prune_smallest_([a], 1.5)


@pytest.mark.parametrize("bad", [
    lambda: gg_init_(torch.empty(3, 3), shape=-1.0),
    lambda: gg_init_(torch.empty(3, 3), shape="laplace"),
    lambda: gg_init_(torch.empty(4), shape=1.0),
    lambda: gg_init_([0.0, 1.0], shape=1.0),
    lambda: gg_init_(torch.empty(3, 3), shape=1.0, std=float("nan")),
    lambda: estimate_gg_shape(torch.tensor([1.0])),
    lambda: estimate_gg_shape([]),
    lambda: estimate_gg_shape(torch.tensor([1.0, float("inf")])),
    lambda: backslash_penalty([torch.ones(2)], float("inf"), 1.0),
    lambda: BackSlash(lam=1e-3, nu=float("nan")),
    lambda: BackSlash(lam=1e-3, update_every=2.5),
    lambda: BackSlash(lam=1e-3).loss_terms(None),
    lambda: gg_quantile([0.0, 0.5], 1.0),
    lambda: deepshape_(torch.tensor([1, 2, 3]), 1.0),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_cards_share_the_reproduction():
    backslash, gg = get("backslash"), get("gg-init")
    assert backslash.seed_id == gg.seed_id == 47
    assert backslash.adapter is BackSlash and gg.component is gg_init_
    assert p047_gg_prior.CLAIM.method == "backslash"
    assert backslash.reproduction == gg.reproduction == "p047_gg_prior"


def test_reproduction_smoke_all_arms():
    claim = p047_gg_prior.CLAIM
    cfg = claim.tiers["smoke"]
    outs = {arm: p047_gg_prior.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert set(out.metrics) == {claim.metric, *claim.extra_metrics}, arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        curve = out.curves["pruned_acc_vs_fraction"]
        assert curve["x"] == cfg["curve_fractions"]
        assert curve["y"][0] == pytest.approx(out.metrics["test_acc"])
    assert outs["default"].metrics["selected_lam"] == 0.0
    assert outs["l1"].info["final_shapes"] and outs["l1"].info["penalty"] == "l1"
    with pytest.raises(PriorlabError):
        p047_gg_prior.run("L1", dict(cfg), 0)
