"""LPN (seed 28): convexity of psi, f = grad psi, prior by inversion, loss values, errors."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.proximal_matching import annealed_gamma, proximal_matching_loss
from priorlab.nn.lpn import ICNN, ClipWeights, LearnedProximalNetwork
from priorlab.registry import get
from priorlab.reproductions import p028_lpn


def _lpn(dim=3, alpha=0.0, seed=0):
    torch.manual_seed(seed)
    model = LearnedProximalNetwork(dim, hidden=16, layers=3, beta=2.0, alpha=alpha).double()
    with torch.no_grad():  # push weights away from the clamp so the test is not trivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.clip_weights()
    return model


def test_psi_is_convex_along_random_lines():
    model = _lpn()
    torch.manual_seed(1)
    start, direction = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
    t = torch.linspace(-3, 3, 61, dtype=torch.float64)
    points = (start[:, None, :] + t[None, :, None] * direction[:, None, :]).reshape(-1, 3)
    values = model.potential(points).detach().reshape(20, 61)
    second_difference = values[:, 2:] - 2 * values[:, 1:-1] + values[:, :-2]
    assert (second_difference >= -1e-10).all()
    assert all(w.min() >= 0 for w in model.potential.constrained_weights())


def test_prox_is_the_gradient_of_psi_and_monotone():
    model = _lpn(alpha=0.5)
    y = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model.potential(y).sum(), y)
    torch.testing.assert_close(model.prox(y.detach()), grad)
    # finite differences of psi agree with f
    eps = 1e-6
    basis = torch.eye(3, dtype=torch.float64)
    numeric = torch.stack([(model.potential(y + eps * e) - model.potential(y - eps * e)) / (2 * eps)
                           for e in basis], 1).detach()
    torch.testing.assert_close(model.prox(y.detach()).detach(), numeric, rtol=1e-5, atol=1e-6)
    # gradient of a (strongly) convex function: <f(a) - f(b), a - b> >= alpha ||a - b||^2
    a, b = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    with torch.no_grad():
        inner = ((model.prox(a) - model.prox(b)) * (a - b)).sum(1)
    assert (inner >= 0.5 * (a - b).pow(2).sum(1) - 1e-9).all()


def test_prox_keeps_a_graph_for_training_and_none_under_no_grad():
    model = _lpn()
    y = torch.randn(4, 3, dtype=torch.float64)
    out = model(y)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        assert not model.prox(y).requires_grad


def test_prior_value_recovers_a_known_prior():
    # psi(y) = ||y||^2 / 4 + <c, y> (an ICNN whose z-path is switched off, alpha = 1/2) gives
    # f(y) = y / 2 + c, the prox of phi(x) = ||x - c||^2 - ||x||^2 / 2 (a non-convex phi is fine)
    model = LearnedProximalNetwork(2, hidden=4, layers=1, alpha=0.5).double()
    c = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.potential.x_out.weight.copy_(c[None, :])
    x = torch.tensor([[0.0, 0.0], [1.0, 0.5], [-0.4, 0.7]], dtype=torch.float64)
    phi = model.prior_value(x, steps=3000, lr=2e-2)
    expected = (x - c).pow(2).sum(1) - 0.5 * x.pow(2).sum(1)
    torch.testing.assert_close(phi - phi[0], expected - expected[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(model.prox(model.invert(x, steps=3000, lr=2e-2)).detach(), x,
                               atol=1e-4, rtol=0)


def test_proximal_matching_known_values():
    pred = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    target = torch.zeros(3, 2)
    # squared distances 0, 2, 25 with gamma = 2: 1 - exp(-d2 / 4)
    expected = (0 + (1 - math.exp(-0.5)) + (1 - math.exp(-25 / 4))) / 3
    assert float(proximal_matching_loss(pred, target, 2.0)) == pytest.approx(expected, rel=1e-6)
    per_dim = (0 + (1 - math.exp(-1 / 4)) + (1 - math.exp(-12.5 / 4))) / 3
    assert float(proximal_matching_loss(pred, target, 2.0, mean_over_dims=True)) == \
        pytest.approx(per_dim, rel=1e-6)
    assert float(proximal_matching_loss(target, target, 0.1)) == 0.0


def test_annealed_gamma_stages():
    values = [annealed_gamma(s, 100, 0.8, 0.1, 4) for s in (0, 24, 25, 50, 75, 99, 150)]
    assert values == pytest.approx([0.8, 0.8, 0.4, 0.2, 0.1, 0.1, 0.1])
    assert annealed_gamma(0, 10, 0.5, 0.5, 1) == 0.5


def test_prox_matching_recovers_the_soft_threshold():
    # exact MAP prox of a known prior: fit f to soft-thresholding samples (noise-free pairs), so
    # the proximal-matching loss with small gamma has the soft threshold as its minimiser
    torch.manual_seed(0)
    model = LearnedProximalNetwork(1, hidden=32, layers=2, beta=10.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)  # 1e-2 diverges at gamma = 0.1
    for step in range(200):
        y = torch.rand(256, 1) * 6 - 3
        error = model(y) - p028_lpn.soft_threshold(y, 1.0)
        # L1 warm start, as the paper does: from far away the narrow loss has no gradient
        loss = error.abs().mean() if step < 100 else proximal_matching_loss(
            error, torch.zeros_like(error), annealed_gamma(step - 100, 100, 0.5, 0.1, 3))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.clip_weights()
    grid = torch.linspace(-3, 3, 61).unsqueeze(1)
    with torch.no_grad():
        error = (model.prox(grid) - p028_lpn.soft_threshold(grid, 1.0)).abs()
    assert float(error.mean()) < 0.08


def test_clip_weights_adapter_and_bad_inputs():
    model = _lpn()
    with torch.no_grad():
        model.potential.z_out.weight.fill_(-1.0)
    adapter = ClipWeights()
    assert adapter.setup(model, None) is model
    adapter.after_step(type("Ctx", (), {"model": model})())
    assert model.potential.z_out.weight.min() >= 0
    for bad in (lambda: ICNN(2, hidden=0), lambda: ICNN(2, beta=-1.0), lambda: ICNN(1.5),
                lambda: model.prox(torch.zeros(2, 4, dtype=torch.float64)),
                lambda: model.prox(torch.zeros(2, 3, dtype=torch.long)),
                lambda: model.invert(torch.zeros(2, 3, dtype=torch.float64), lr=0.0),
                lambda: proximal_matching_loss(torch.zeros(2), torch.zeros(2), float("nan")),
                lambda: annealed_gamma(-1, 10, 0.5, 0.1, 2),
                lambda: annealed_gamma(0, 10, 0.5, 0.1, 20),
                lambda: p028_lpn.run("l3", p028_lpn.CLAIM.tiers["smoke"], 0)):
        with pytest.raises(PriorlabError):
            bad()


def test_card_and_claim_are_wired():
    card = get("lpn")
    assert card.seed_id == 28 and card.reproduction == "p028_lpn"
    claim = p028_lpn.CLAIM
    assert set(claim.arms) == {"l2", "l1", "prox_matching"} and not claim.higher_is_better
    named = {c.clause for c in (*claim.comparisons, *claim.bounds)} | {u.clause for u in claim.untested}
    assert named == set(claim.clauses)


def test_arms_share_data_and_differ_only_in_the_loss():
    cfg = {**p028_lpn.CLAIM.tiers["smoke"], "steps": 10, "batch": 64, "invert_steps": 5}
    outputs = {arm: p028_lpn.run(arm, cfg, 0) for arm in p028_lpn.ARMS}
    # prox_matching = l1 during its warm start (pretrain_frac * steps): identical curves there
    warm = {**cfg, "pretrain_frac": 1.0}
    torch.testing.assert_close(torch.tensor(p028_lpn.run("prox_matching", warm, 0).curves["prox"]["y"]),
                               torch.tensor(outputs["l1"].curves["prox"]["y"]))
    assert outputs["l2"].curves["prox"]["y"] != outputs["l1"].curves["prox"]["y"]
    assert all(math.isfinite(v) for out in outputs.values() for v in out.metrics.values())


def test_proximal_matching_rejects_non_finite_input_and_a_non_bool_flag():
    x = torch.zeros(2, 3)
    with pytest.raises(PriorlabError, match="prediction"):
        proximal_matching_loss(torch.full((2, 3), float("nan")), x, 0.5)
    with pytest.raises(PriorlabError, match="target"):
        proximal_matching_loss(x, torch.full((2, 3), float("inf")), 0.5)
    with pytest.raises(PriorlabError, match="mean_over_dims"):
        proximal_matching_loss(x, x, 0.5, mean_over_dims=torch.tensor([0.5, 0.5]))
