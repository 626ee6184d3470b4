"""GG priors (seed 47): GG moments, init, shape estimation, BackSlash, DeepShape, repro smoke."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import gennorm
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.gg_prior import (
    SHAPE_SEARCH,
    SHAPE_TABLE,
    backslash_penalty,
    backslash_step_,
    deepshape_,
    estimate_gg_shape,
    gg_init_,
    gg_init_model_,
    gg_moment_ratio,
    gg_quantile,
    gg_scale,
    lookup_gg_shape,
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


def test_gg_init_default_variance_is_official_xi_over_shape0_and_reproducible():
    a, b = torch.empty(200, 300), torch.empty(200, 300)
    gg_init_(a, generator=torch.Generator().manual_seed(3))  # defaults: shape 2, xi 2
    gg_init_(b, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # official gg_init.py: variance xi / shape[0] (the fan-out of an nn.Linear weight), not 2/300
    assert float(a.var()) == pytest.approx(2 / 200, rel=0.02)
    assert lookup_gg_shape(a) == pytest.approx(2.0, abs=0.05)
    sigmoid = gg_init_(torch.empty(200, 300), 1.0, xi=1.0, generator=torch.Generator().manual_seed(0))
    assert float(sigmoid.var()) == pytest.approx(1 / 200, rel=0.03)
    conv = gg_init_(torch.empty(64, 4, 3, 3), 1.0, generator=torch.Generator().manual_seed(0))
    assert float(conv.var()) == pytest.approx(2 / (64 * 9), rel=0.05)


def test_gg_init_model_follows_the_official_layout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 400), nn.LayerNorm(400), nn.ReLU(), nn.Linear(400, 50))
    nn.init.normal_(model[1].weight)  # so "set to 1" is visible
    gg_init_model_(model, generator=torch.Generator().manual_seed(1))
    assert float(model[0].weight.detach().var()) == pytest.approx(2 / 400, rel=0.02)
    assert float(model[3].weight.detach().var()) == pytest.approx(2 / 50, rel=0.02)
    assert torch.equal(model[0].bias, torch.zeros(400))
    assert torch.equal(model[3].bias, torch.zeros(50))
    assert torch.equal(model[1].weight, torch.ones(400)) and torch.equal(model[1].bias, torch.zeros(400))
    again = nn.Sequential(nn.Linear(300, 400), nn.LayerNorm(400), nn.ReLU(), nn.Linear(400, 50))
    gg_init_model_(again, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again[0].weight, model[0].weight)


@pytest.mark.parametrize("shape", [0.3, 0.7, 1.0, 1.5, 2.0, 2.7])
def test_lookup_recovers_the_shape_of_generalised_gaussian_samples(shape):
    # drawn by scipy's gennorm, independent of gg_init_'s sampler
    samples = torch.from_numpy(gennorm.rvs(shape, scale=0.05, size=200_000, random_state=7))
    assert lookup_gg_shape(samples) == pytest.approx(shape, abs=0.03)
    half = samples.numel() // 2
    assert lookup_gg_shape([samples[:half].reshape(100, -1), samples[half:]]) == lookup_gg_shape(samples)


def test_lookup_table_ends_and_uncentred_ratio():
    assert SHAPE_TABLE[0] == 0.1 and SHAPE_TABLE[-1] == 3.0 and len(SHAPE_TABLE) == 291
    assert lookup_gg_shape(torch.rand(100_000, generator=torch.Generator().manual_seed(0)) - 0.5) == 3.0
    spike = torch.zeros(100_000)
    spike[0] = 1.0
    assert lookup_gg_shape(spike) == 0.1
    # not centred, as the official: a Gaussian shifted by 3 sd looks flat (ratio near 1)
    shifted = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) + 3.0
    assert lookup_gg_shape(shifted) == 3.0 and estimate_gg_shape(shifted) == pytest.approx(2.0, rel=0.05)


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


def test_backslash_step_known_values():
    w = torch.tensor([1.0, -0.5, 0.0, 3.0])
    # rate 4, nu 0.5, N 4: factor 0.5, times sign(w) (|w| + 1)^-0.5; zero stays zero
    assert backslash_step_([w], rate=4.0, nu=0.5) == 0.5
    expected = [1 - 0.5 / math.sqrt(2), -0.5 + 0.5 / math.sqrt(1.5), 0.0, 3 - 0.5 / 2]
    torch.testing.assert_close(w, torch.tensor(expected))
    # N pools all tensors: 1 + 3 = 4 weights, rate 8, nu 1 -> a plain sign step of 2
    a, b = torch.tensor([2.0]), torch.tensor([-1.0, 0.0, 1.0])
    backslash_step_([a, b], rate=8.0, nu=1.0)
    assert torch.equal(a, torch.tensor([0.0])) and torch.equal(b, torch.tensor([1.0, 0.0, -1.0]))
    # nu = 2: (|w| + 1)^1 grows with |w|; clip 0.5 shifts it
    c = torch.tensor([1.0, -2.0])
    backslash_step_(c, rate=0.5, nu=2.0, clip=0.5)
    torch.testing.assert_close(c, torch.tensor([1.0 - 0.5 * 1.5, -2.0 + 0.5 * 2.5]))
    untouched = torch.tensor([1.0, -2.0])
    assert backslash_step_(untouched, rate=0.0, nu=1.0) == 1.0
    assert torch.equal(untouched, torch.tensor([1.0, -2.0]))


def test_backslash_step_fits_the_pooled_shape_first():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(50, 40, generator=g), torch.distributions.Laplace(0.0, 1.0).sample((300,))]
    nu = lookup_gg_shape(weights)
    manual = [w.clone() for w in weights]
    assert backslash_step_(weights, rate=1e3) == nu
    backslash_step_(manual, rate=1e3, nu=nu)
    for got, want in zip(weights, manual):
        assert torch.equal(got, want)


def test_penalty_gradient_with_clip_one_is_the_official_step():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(30, generator=g)
    w[3] = 0.0
    rate, nu = 6.0, 0.4
    stepped = w.clone()
    backslash_step_(stepped, rate=rate, nu=nu)
    leaf = w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(backslash_penalty(leaf, rate / w.numel(), nu, clip=1.0), leaf)
    torch.testing.assert_close(w - grad, stepped)


def test_backslash_penalty_known_values_and_gradients():
    w = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    v = torch.tensor([[0.5]], requires_grad=True)
    assert backslash_penalty([w], 0.5, 1.0).item() == pytest.approx(0.5 * 3)
    assert backslash_penalty([w], 0.5, 2.0).item() == pytest.approx(0.5 * 5)
    assert backslash_penalty([w], 1.0, 1.0, clip=1.0).item() == pytest.approx(2 + 3 + 1)
    # one shape per tensor: 1 + 2 (nu=1) + 0.5^3 (nu=3)
    assert backslash_penalty([w, v], 1.0, [1.0, 3.0]).item() == pytest.approx(3.125)
    penalty = backslash_penalty([w], 1.0, 0.5)
    (grad,) = torch.autograd.grad(penalty, w)
    # d |w|^0.5 = 0.5 |w|^-0.5 sign(w); exact zero gets 0, not inf
    torch.testing.assert_close(grad, torch.tensor([0.5, -0.5 / math.sqrt(2), 0.0]))
    zero = backslash_penalty([w], 0.0, 0.5)
    assert float(zero) == 0.0 and not zero.requires_grad


@pytest.mark.parametrize("nu", [np.float32(2.0), np.float64(2.0), np.array(2.0), torch.tensor(2.0), 2,
                                [2.0, 2.0], np.array([2.0, 2.0]), torch.tensor([2.0, 2.0])])
def test_backslash_penalty_accepts_numpy_and_tensor_shapes(nu):
    w, v = torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])
    assert backslash_penalty([w, v], 1.0, nu).item() == pytest.approx(1 + 4 + 9)


def test_a_bare_tensor_is_one_tensor():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert backslash_penalty(w, 1.0, 1.0).item() == pytest.approx(6.5)
    assert backslash_penalty(w, 1.0, np.array([1.0])).item() == pytest.approx(6.5)
    # ranked over the whole tensor, as a one-element list is
    bare, listed = w.clone(), w.clone()
    assert prune_smallest_(bare, 0.5) == 2
    prune_smallest_([listed], 0.5)
    assert torch.equal(bare, torch.tensor([[0.0, -2.0], [3.0, 0.0]])) and torch.equal(bare, listed)
    row = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    prune_smallest_(row, 0.5)
    assert torch.equal(row, torch.tensor([[0.0, 0.0], [3.0, 4.0]]))


@pytest.mark.parametrize("nu", [np.ones((2, 2)), [1.0, 2.0, 3.0], "laplace", None, True, torch.tensor(-1.0),
                                np.array([1.0, float("nan")])])
def test_backslash_penalty_bad_shapes_name_nu(nu):
    with pytest.raises(PriorlabError, match="nu"):
        backslash_penalty([torch.ones(2), torch.ones(3)], 1.0, nu)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 10, generator=g), torch.randint(0, 3, (64,), generator=g)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))


def test_backslash_adapter_applies_the_official_step_after_each_optimiser_step():
    model, (x, y) = _net(), _data()
    twin = _net()
    adapter = BackSlash(rate=5.0)
    adapter.setup(model, None)
    assert len(adapter.params) == 4  # all parameters, biases too, as the official
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    ctx = StepContext(model=model, optimizer=optimizer)
    for _ in range(3):
        for net, opt in ((model, optimizer), (twin, twin_optimizer)):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        adapter.after_step(ctx)
        assert adapter.last_nu == backslash_step_(list(twin.parameters()), 5.0)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert adapter.steps == 3 and adapter.loss_terms(ctx) == {}


def test_backslash_sparsifies_and_l1_is_the_fixed_shape_step():
    x, y = _data()
    small = {}
    for name, adapter in (("none", BackSlash(rate=0.0)), ("backslash", BackSlash(rate=5.0)),
                          ("l1", BackSlash(rate=5.0, nu=1.0))):
        model = _net()
        fit(model, [(x, y)], torch.optim.Adam(model.parameters(), lr=1e-2),
            nn.functional.cross_entropy, epochs=60, adapters=[adapter], show_progress=False)
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        small[name] = float((flat.abs() < 1e-2).float().mean())
        if name == "l1":
            assert adapter.last_nu == 1.0
        elif name == "backslash":
            # from the uniform init's 3 (table end) to peaked: the step drives weights to 0
            assert adapter.last_nu < 1.0
    assert small["backslash"] > small["none"] + 0.2 and small["l1"] > small["none"] + 0.2


def test_backslash_state_dict_round_trip():
    adapter = BackSlash(rate=1.0)
    adapter.setup(_net(), None)
    adapter.after_step(None)
    state = adapter.state_dict()
    other = BackSlash(rate=1.0)
    other.load_state_dict(state)
    assert other.last_nu == adapter.last_nu and other.steps == 1
    with pytest.raises(PriorlabError, match="setup"):
        BackSlash().after_step(None)


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
    lambda: backslash_penalty(1.0, 1e-3, 1.0),
    lambda: backslash_penalty([torch.ones(2), "w"], 1e-3, 1.0),
    lambda: backslash_step_([torch.ones(2)], rate=-1.0),
    lambda: backslash_step_([torch.ones(2)], rate=1.0, nu="laplace"),
    lambda: backslash_step_([torch.ones(2)], rate=1.0, clip=0.0),
    lambda: backslash_step_([torch.ones(2, dtype=torch.int64)], rate=1.0, nu=1.0),
    lambda: lookup_gg_shape(torch.zeros(5)),
    lambda: lookup_gg_shape([]),
    lambda: BackSlash(nu=float("nan")),
    lambda: BackSlash(rate="fast"),
    lambda: BackSlash(params=torch.ones(2, dtype=torch.int64)),
    lambda: gg_init_(torch.empty(3, 3), xi=-2.0),
    lambda: gg_init_model_([torch.empty(3, 3)]),
    lambda: prune_smallest_(torch.ones(3), -0.1),
    lambda: prune_smallest_(0.5, 0.5),
    lambda: gg_quantile([0.0, 0.5], 1.0),
    lambda: deepshape_(torch.tensor([1, 2, 3]), 1.0),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_cards_share_the_reproduction():
    backslash, gg = get("backslash"), get("gg-init")
    assert backslash.seed_id == gg.seed_id == 47
    assert backslash.adapter is BackSlash and gg.component is gg_init_model_
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
        assert out.resolution == {"pruned_acc": 1 / 360, "test_acc": 1 / 360}
        epochs = cfg["backslash_epochs"] + cfg["finetune_epochs"]
        assert len(out.curves["train_loss"]["y"]) == len(out.curves["pooled_shape"]["y"]) == epochs
    assert outs["default"].metrics["selected_rate"] == 0.0 and outs["default"].tuning == {}
    assert outs["l1"].tuning == {"rate": {"grid": cfg["rate_grid"], "selected": cfg["rate_grid"][0]}}
    assert outs["l1"].info["backslash_nu_last"] == 1.0
    assert outs["backslash"].info["backslash_nu_last"] < 3.0
    with pytest.raises(PriorlabError):
        p047_gg_prior.run("L1", dict(cfg), 0)


def test_method_arm_differs_from_the_baseline_at_the_same_seed():
    cfg = p047_gg_prior.CLAIM.tiers["smoke"]
    runs = {step: p047_gg_prior._train(dict(cfg), 0, None, step, 10.0) for step in (None, "backslash")}
    again = p047_gg_prior._train(dict(cfg), 0, None, None, 0.0)
    plain, stepped = (runs[s]["model"] for s in (None, "backslash"))
    for a, b in zip(plain.parameters(), again["model"].parameters()):
        assert torch.equal(a, b)  # the same seed reproduces the baseline exactly
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), stepped.parameters()))
    assert lookup_gg_shape(list(stepped.parameters())) < lookup_gg_shape(list(plain.parameters()))
    gg = p047_gg_prior._train(dict(cfg), 0, 2.0, None, 0.0)["model"]
    assert not torch.equal(gg[1].weight, plain[1].weight)


def test_claim_declares_clauses_cards_budget_and_revision():
    claim = p047_gg_prior.CLAIM
    assert claim.revision == 2
    assert {c.card for c in claim.comparisons} == {"backslash", "gg-init"}
    named = {c.clause for c in claim.comparisons} | {g.clause for g in claim.guards}
    assert named | {u.clause for u in claim.untested} == set(claim.clauses)
    assert claim.budget.unit == "epochs" and claim.budget.ours == (
        claim.tiers["full"]["backslash_epochs"] + claim.tiers["full"]["finetune_epochs"])


# ------------------------------------------------------------------ issue 16: no silent NaN/inf

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_backslash_penalty_refuses_nonfinite_weights(bad):
    # the penalty came back NaN/inf without a word
    weights = [torch.ones(3), torch.tensor([1.0, bad])]
    with pytest.raises(PriorlabError, match=r"^backslash_penalty: params\[1\] contains"):
        backslash_penalty(weights, 1e-3, 1.5)


def test_backslash_penalty_refuses_an_overflowing_penalty():
    with pytest.raises(PriorlabError, match=r"^backslash_penalty: the penalty of params overflows"):
        backslash_penalty([torch.full((3,), 1e30)], 1e-3, 1.5)
    assert torch.isfinite(backslash_penalty([torch.full((3,), 1e30).double()], 1e-3, 1.5))


@pytest.mark.parametrize("params, named", [
    (1.5, "params must be a tensor or a list"),
    ([], "params holds no tensors"),
    ([torch.ones(2), torch.ones(2, dtype=torch.long)], r"params\[1\] must have dtype float"),
])
def test_backslash_penalty_errors_name_params(params, named):
    with pytest.raises(PriorlabError, match=rf"^backslash_penalty: {named}"):
        backslash_penalty(params, 1e-3, 1.5)
