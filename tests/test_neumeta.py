"""NeuMeta (seed 36): coordinates, the weight INR, smoothing permutation, family, reproduction."""

import math

import pytest
import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.nn.neumeta import (
    MorphableMLP,
    NeuMeta,
    sample_width,
    shortest_hamiltonian_path,
    smooth_permutation,
    total_variation,
    training_widths,
    weight_coordinates,
    weighted_regression_loss,
)
from priorlab.registry import get
from priorlab.reproductions import p036_neumeta


def _family():
    return MorphableMLP(in_features=6, out_features=4, depth=2)


def _inr(family, **kwargs):
    torch.manual_seed(0)
    return NeuMeta(family.num_tensors, hidden=16, num_layers=2, num_freqs=3, norm=8,
                   kernel_sizes=family.kernel_sizes, **kwargs)


def test_weight_coordinates_known_values():
    weight, bias, kernel = weight_coordinates([(2, 3), (2,), (2, 1, 5)])
    assert weight.shape == (6, 6) and bias.shape == (2, 6) and kernel.shape == (2, 6)
    # row-major (i, j), then tensor id, number of tensors, rows, columns
    torch.testing.assert_close(weight[4], torch.tensor([0.0, 1, 1, 3, 2, 3]))
    torch.testing.assert_close(bias[1], torch.tensor([1.0, 1, 0, 3, 2, 1]))
    torch.testing.assert_close(kernel[1], torch.tensor([2.0, 1, 0, 3, 2, 1]))


def test_positional_input_and_fan_in_division():
    family = _family()
    inr = _inr(family)
    shapes = family.shapes(5)
    weights = inr(shapes)
    assert [tuple(w.shape) for w in weights] == shapes == [
        (5, 1, 6), (5,), (5, 5), (5,), (4, 5), (4,)]
    # w[k, i, j] = F_k(encode(coords)) / columns: check the hidden-to-hidden tensor by hand
    coords = weight_coordinates(shapes)[2]
    raw = torch.cat([coords[:, :3] / coords[:, 3:], coords[:, 3:] / 8], dim=1)
    expected = inr.nets[2](inr.encoding(raw)).squeeze(-1) / 5
    torch.testing.assert_close(weights[2], expected.reshape(5, 5))
    assert inr.encoding.out_features(6) == 6 * 7


def test_any_width_and_unseen_widths_come_from_one_function():
    family = _family()
    inr = _inr(family)
    x = torch.randn(7, 6)
    for width in (1, 3, 5, 11, 40):
        logits = family.forward(x, inr(family.shapes(width)))
        assert logits.shape == (7, 4) and torch.isfinite(logits).all()
    # sizes are inputs too: unit 1 of 3 and unit 3 of 9 share the fraction 1/3, not the weights
    assert not torch.equal(inr(family.shapes(3))[0][1], inr(family.shapes(9))[0][3])


def test_coordinate_noise_is_seeded_and_zero_is_deterministic():
    family = _family()
    inr = _inr(family)
    shapes = family.shapes(4)
    clean = inr(shapes)
    assert all(torch.equal(a, b) for a, b in zip(clean, inr(shapes)))
    noisy = [inr(shapes, coordinate_noise=1.0, generator=torch.Generator().manual_seed(s))
             for s in (1, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(noisy[0], noisy[1]))
    assert not torch.equal(noisy[0][2], noisy[2][2])
    assert not torch.equal(noisy[0][2], clean[2])


def test_gradients_reach_every_tensor_net_and_state_dict_round_trips():
    family = _family()
    # seed 1: the generated second hidden layer is alive at init (with the official init its
    # bias can dominate and switch every unit off, as with seed 0)
    torch.manual_seed(1)
    inr = NeuMeta(family.num_tensors, hidden=16, num_layers=2, num_freqs=3, norm=8,
                  kernel_sizes=family.kernel_sizes)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    F.cross_entropy(family.forward(x, inr(family.shapes(5))), y).backward()
    for k, net in enumerate(inr.nets):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), k
        assert any(g.abs().sum() > 0 for g in grads), k
    copy = NeuMeta(family.num_tensors, hidden=16, num_layers=2, num_freqs=3, norm=8,
                   kernel_sizes=family.kernel_sizes)
    copy.load_state_dict(inr.state_dict())
    for a, b in zip(copy(family.shapes(6)), inr(family.shapes(6))):
        torch.testing.assert_close(a, b)


def test_family_build_forward_and_parameters_agree():
    family = _family()
    params = _inr(family)(family.shapes(5))
    model = family.build(5, params)
    x = torch.randn(9, 6)
    torch.testing.assert_close(model(x), family.forward(x, params))
    back = family.parameters_of(model)
    assert [tuple(p.shape) for p in back] == family.shapes(5)
    assert all(torch.equal(a, b.detach()) for a, b in zip(back, params))


def test_shortest_hamiltonian_path_recovers_a_line():
    points = torch.linspace(0, 1, 9).unsqueeze(1)
    shuffled = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    order = shuffled[shortest_hamiltonian_path(points[shuffled])]
    assert order.tolist() in (list(range(9)), list(range(8, -1, -1)))


def test_smooth_permutation_keeps_the_function_and_shortens_unit_paths():
    torch.manual_seed(0)
    model = MorphableMLP(10, 3, depth=2).build(12)
    smooth = smooth_permutation(model)
    x = torch.randn(16, 10)
    torch.testing.assert_close(smooth(x), model(x), rtol=1e-5, atol=1e-6)
    assert not torch.equal(smooth[1].weight, model[1].weight)
    assert torch.equal(smooth[1].weight.sort(0).values, model[1].weight.sort(0).values)
    assert torch.equal(smooth[5].bias, model[5].bias)  # outputs keep their order

    def path_length(net):
        units = torch.cat([net[1].weight, net[1].bias[:, None], net[3].weight.T], dim=1)
        return float((units[1:] - units[:-1]).abs().sum().detach())

    units = torch.cat([model[1].weight, model[1].bias[:, None], model[3].weight.T], 1).detach()
    gen = torch.Generator().manual_seed(0)
    random_paths = [float((u[1:] - u[:-1]).abs().sum()) for u in
                    (units[torch.randperm(12, generator=gen)] for _ in range(200))]
    assert path_length(smooth) < min(random_paths)
    assert total_variation(list(smooth.parameters())) < total_variation(list(model.parameters()))


def test_weighted_regression_loss_known_value():
    pred = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    target = [torch.tensor([0.0, 2.0]), torch.tensor([[1.0]])]
    # tensor 1: weights (eps, 2+eps)/(2+eps) -> (~0, 1); errors (1, 4) -> mean(0, 4) = 2
    # tensor 2: weight 1, error 1 -> 1; mean over tensors 1.5
    assert float(weighted_regression_loss(pred, target)) == pytest.approx(1.5, abs=1e-5)


def test_width_helpers():
    assert training_widths(8, 32, 4) == [8, 12, 16, 20, 24, 28, 32]
    gen = torch.Generator().manual_seed(0)
    draws = {sample_width([3, 5, 7], gen) for _ in range(100)}
    assert draws == {3, 5, 7}


@pytest.mark.parametrize("bad", [
    lambda: NeuMeta(0),
    lambda: NeuMeta(6, num_layers=0),
    lambda: NeuMeta(6, norm=0.0),
    lambda: NeuMeta(2, kernel_sizes=[1, 0]),
    lambda: NeuMeta(2, kernel_sizes=[1])((([3, 2]), (3,))),
    lambda: NeuMeta(2)([(3, 2)]),
    lambda: NeuMeta(2)([(3, 2), (3, 0)]),
    lambda: NeuMeta(2)("shapes"),
    lambda: NeuMeta(2)([(3, 2, 4), (3,)]),  # a kernel of 4 values, but the INR emits 1
    lambda: NeuMeta(2)([(3, 2), (3,)], coordinate_noise=float("nan")),
    lambda: MorphableMLP(6, 4).forward(torch.randn(2, 5), MorphableMLP(6, 4).shapes(3)),
    lambda: MorphableMLP(6, 4).build(3, [torch.zeros(2)] * 6),
    lambda: MorphableMLP(6, 4).shapes(2.5),
    lambda: sample_width([0, 3]),
    lambda: weighted_regression_loss([torch.zeros(2)], [torch.zeros(3)]),
    lambda: shortest_hamiltonian_path(torch.tensor([[float("nan")]])),
    lambda: smooth_permutation(torch.nn.Linear(3, 3)),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_pruning_baseline_keeps_largest_units_and_is_exact_at_full_width():
    torch.manual_seed(0)
    family = MorphableMLP(10, 3, depth=2)
    model = family.build(8)
    x = torch.randn(5, 10)
    torch.testing.assert_close(p036_neumeta.prune_to_width(family, model, 8)(x), model(x))
    pruned = p036_neumeta.prune_to_width(family, model, 3)
    keep = model[1].weight.abs().sum(1).topk(3).indices.sort().values
    assert torch.equal(pruned[1].weight, model[1].weight[keep])
    assert pruned[5].weight.shape == (3, 3)


def test_card_points_at_component_and_reproduction():
    card = get("neumeta")
    assert card.seed_id == 36 and card.component is NeuMeta
    assert p036_neumeta.CLAIM.method == card.id
    assert math.isclose(p036_neumeta.CLAIM.comparisons[0].margin, 0.02)


def test_reproduction_smoke_all_arms():
    claim = p036_neumeta.CLAIM
    cfg = claim.tiers["smoke"]
    outs = {arm: p036_neumeta.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert set(out.metrics) == {claim.metric, *claim.extra_metrics}, arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        assert set(out.info["acc_by_width"]) == {str(w) for w in cfg["eval_widths"]}
    assert outs["neumeta"].metrics != outs["individual"].metrics
    assert outs["neumeta"].metrics != outs["pruned"].metrics
    # pruned and neumeta start from the same full-width network (same seed, same recipe)
    assert (outs["pruned"].info["full_width_pretrained_acc"]
            == outs["neumeta"].info["full_width_pretrained_acc"])
    assert outs["neumeta"].info["permuted_acc"] == outs["neumeta"].info["full_width_pretrained_acc"]
    with pytest.raises(PriorlabError):
        p036_neumeta.run("neumeat", dict(cfg), 0)
