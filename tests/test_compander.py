"""Weight Compander (seed 25): known values, identity case, parametrisation invariants, repro."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from priorlab.errors import PriorlabError
from priorlab.nn.compander import (
    WeightCompander,
    apply_weight_compander,
    remove_weight_compander,
)
from priorlab.registry import get
from priorlab.reproductions import p025_compander



def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3))


def test_known_values():
    # 2 tanh(3 w / 2): tanh(0.75) = 0.635149..., tanh(15) = 1 - 1.9e-13
    f = WeightCompander(alpha=2.0, beta=3.0)
    w = torch.tensor([0.0, 0.5, -0.5, 10.0], dtype=torch.float64)
    expected = torch.tensor([0.0, 2 * 0.6351489523872873, -2 * 0.6351489523872873, 2.0],
                            dtype=torch.float64)
    torch.testing.assert_close(f(w), expected)


def test_odd_bounded_and_slope_beta_at_zero():
    f = WeightCompander(alpha=0.3, beta=2.5)
    w = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    out = f(w)
    torch.testing.assert_close(out, -f(-w))
    assert out.abs().max() <= 0.3
    # strictly increasing (away from float saturation): the map loses no information
    assert (f(torch.linspace(-0.5, 0.5, 101, dtype=torch.float64)).diff() > 0).all()
    zero = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(f(zero), zero)
    assert float(slope) == pytest.approx(2.5)
    # right_inverse undoes forward inside the saturation range
    inside = torch.linspace(-0.29, 0.29, 51, dtype=torch.float64)
    torch.testing.assert_close(f(f.right_inverse(inside)), inside)


def test_alpha_inf_beta_one_is_identity_and_trains_like_the_plain_model():
    f = WeightCompander(alpha=math.inf, beta=1.0)
    w = torch.randn(5, 5)
    assert torch.equal(f(w), w) and torch.equal(f.right_inverse(w), w)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 3, (32,))
    finals = []
    for compand in (False, True):
        model = _model()
        if compand:
            apply_weight_compander(model, alpha=math.inf, beta=1.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        finals.append([model[0].weight.detach(), model[4].weight.detach(), model[4].bias.detach()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_apply_keeps_initial_weights_and_touches_only_conv_and_linear_weights():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = apply_weight_compander(model, alpha=4.0, beta=2.0)
    assert changed == ["0", "4"]
    assert parametrize.is_parametrized(model[0], "weight")
    assert parametrize.is_parametrized(model[4], "weight")
    assert not parametrize.is_parametrized(model[4], "bias")
    assert not parametrize.is_parametrized(model[1])
    torch.testing.assert_close(model[0].weight, before["0.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(model[4].weight, before["4.weight"], rtol=0, atol=1e-6)
    # alpha is 4 initial stds of each tensor
    comp = model[4].parametrizations.weight[0]
    assert float(comp.alpha) == pytest.approx(4 * float(before["4.weight"].std()), rel=1e-6)
    # raw weights are the inverse image: smaller than the effective ones (slope 2 at zero)
    raw = model[4].parametrizations.weight.original
    assert raw.abs().mean() < model[4].weight.abs().mean()


def test_exclude_and_double_application():
    model = _model()
    assert apply_weight_compander(model, exclude=("4",)) == ["0"]
    assert not parametrize.is_parametrized(model[4])
    with pytest.raises(PriorlabError, match="already"):
        apply_weight_compander(model)


def test_gradient_flows_through_f():
    torch.manual_seed(1)
    layer = nn.Linear(4, 3, bias=False)
    apply_weight_compander(layer, alpha=1.0, beta=2.0, relative=False)
    x = torch.randn(6, 4)
    layer(x).pow(2).sum().backward()
    raw = layer.parametrizations.weight.original
    eff = layer.weight.detach().requires_grad_(True)
    (eff_grad,) = torch.autograd.grad((x @ eff.T).pow(2).sum(), eff)
    # d f / d w = beta * (1 - tanh^2(beta w / alpha))
    expected = eff_grad * 2.0 * (1 - torch.tanh(2.0 * raw.detach()) ** 2)
    torch.testing.assert_close(raw.grad, expected)


def test_learnable_hyperparameters_get_gradients():
    model = _model()
    apply_weight_compander(model, learnable=True)
    names = [n for n, _ in model.named_parameters()]
    assert "0.parametrizations.weight.0.log_alpha" in names
    assert "4.parametrizations.weight.0.log_beta" in names
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    comp = model[4].parametrizations.weight[0]
    assert torch.isfinite(comp.log_alpha.grad) and comp.log_alpha.grad != 0
    assert torch.isfinite(comp.log_beta.grad) and comp.log_beta.grad != 0


def test_saturation_holds_after_aggressive_training():
    model = _model()
    apply_weight_compander(model, alpha=2.0, beta=2.0)
    bound = float(model[4].parametrizations.weight[0].alpha)
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model[4].weight.abs().max() <= bound


def test_state_dict_round_trip_and_remove():
    model = _model()
    apply_weight_compander(model)
    with torch.no_grad():
        model[4].parametrizations.weight.original.mul_(3.0)
    copy = _model()
    apply_weight_compander(copy)
    copy.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    model.eval(), copy.eval()
    torch.testing.assert_close(copy(x), model(x))
    expected = model(x)
    remove_weight_compander(model)
    assert not parametrize.is_parametrized(model[4])
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(PriorlabError):
        remove_weight_compander(model)


@pytest.mark.parametrize("bad", [
    lambda: WeightCompander(alpha=0.0),
    lambda: WeightCompander(alpha=float("nan")),
    lambda: WeightCompander(beta=-2.0),
    lambda: WeightCompander(beta=math.inf),
    lambda: WeightCompander(alpha=math.inf, learnable=True),
    lambda: apply_weight_compander(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3))),
    lambda: apply_weight_compander(_model(), module_types=()),
    lambda: apply_weight_compander(nn.Linear(3, 3), alpha=-1.0),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_zero_weight_tensor_needs_absolute_alpha():
    layer = nn.Linear(3, 3)
    nn.init.zeros_(layer.weight)
    with pytest.raises(PriorlabError, match="relative=False"):
        apply_weight_compander(layer)
    apply_weight_compander(layer, relative=False)
    assert torch.equal(layer.weight, torch.zeros(3, 3))


def test_card_points_at_component_and_reproduction():
    card = get("weight-compander")
    assert card.seed_id == 25 and card.kind == "parametrisation"
    assert card.component is apply_weight_compander
    assert p025_compander.CLAIM.method == card.id


def test_reproduction_smoke_all_arms():
    claim = p025_compander.CLAIM
    cfg = claim.tiers["smoke"]
    outs = {arm: p025_compander.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert set(out.metrics) == {claim.metric, *claim.extra_metrics}, arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        hist = out.curves["weight_hist"]
        assert len(hist["x"]) == len(hist["y"]) == cfg["hist_bins"]
        width = hist["x"][1] - hist["x"][0]
        assert sum(hist["y"]) * width == pytest.approx(1.0)
    # same seed, same data order and effective init: only the method differs
    assert outs["compander"].info["compander"] and not outs["plain"].info["compander"]
    assert outs["plain"].metrics != outs["compander"].metrics
    with pytest.raises(PriorlabError):
        p025_compander.run("compandr", dict(cfg), 0)
