"""HyperZ·Z·W / Terminator (seed 17): operator values, shapes, context dependence, errors, repro."""

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.nn.hyperzzw import (
    MAGNet,
    LocalHyperZZW,
    SFNEBlock,
    Terminator,
    coordinate_grid,
    hyperzzw_elementwise,
    hyperzzw_global,
)
from priorlab.registry import get
from priorlab.reproductions import p017_hyperzzw


def _tiny(**kwargs):
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=1, image_size=6, widths=(3,), local_sizes=(3,),
                slow_hidden=4, local_hidden=4)
    return Terminator(**{**args, **kwargs})


def test_operators_known_values():
    z = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    w = torch.tensor([[[[2.0, 0.0], [1.0, -1.0]]]])
    value = torch.eye(2).view(1, 1, 2, 2)
    # (z * w) @ I = z * w
    torch.testing.assert_close(hyperzzw_global(z, w, value), z * w)
    value = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])  # swaps columns
    torch.testing.assert_close(hyperzzw_global(z, w, value),
                               torch.tensor([[[[0.0, 2.0], [-4.0, 3.0]]]]))
    torch.testing.assert_close(hyperzzw_elementwise(z, w),
                               torch.tensor([[[[2.0, 0.0], [9.0, -16.0]]]]))


def test_coordinate_grid():
    grid = coordinate_grid(3)
    assert grid.shape == (1, 2, 3, 3)
    torch.testing.assert_close(grid[0, 0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(grid[0, 1, 0, :], torch.tensor([-1.0, 0.0, 1.0]))


def test_global_operator_has_full_context():
    # one pixel of the value changes every row's output in a column: full context in one layer
    torch.manual_seed(0)
    z, w, value = torch.randn(1, 1, 5, 5), torch.randn(1, 1, 5, 5), torch.randn(1, 1, 5, 5)
    bumped = value.clone()
    bumped[0, 0, 4, 2] += 1.0
    changed = hyperzzw_global(z, w, bumped) != hyperzzw_global(z, w, value)
    assert changed[0, 0, :, 2].all()


def test_magnet_shapes_and_context_dependence():
    torch.manual_seed(0)
    plain = MAGNet(7, 4, hidden=8)
    assert plain().shape == (1, 4, 7, 7)
    torch.manual_seed(0)
    local = MAGNet(3, 4, hidden=8, context_channels=4)
    a, b = local(torch.randn(2, 4, 6, 6)), local(torch.randn(2, 4, 6, 6))
    assert a.shape == (1, 4, 3, 3) and not torch.allclose(a, b)
    with pytest.raises(PriorlabError):
        local()


def test_local_branch_shape_and_kernel_from_context():
    torch.manual_seed(0)
    branch = LocalHyperZZW(4, 3, hidden=4)
    value = torch.randn(2, 4, 6, 6)
    out1 = branch(torch.randn(2, 4, 6, 6), value)
    out2 = branch(torch.randn(2, 4, 6, 6), value)
    assert out1.shape == value.shape and not torch.allclose(out1, out2)


def test_block_standardised_output_and_no_residual():
    torch.manual_seed(0)
    block = SFNEBlock(2, 5, size=6, local_sizes=(3, 5), slow_hidden=4, local_hidden=4)
    out = block(torch.randn(4, 2, 6, 6))
    assert out.shape == (4, 5, 6, 6)
    assert torch.isfinite(out).all()
    # standardise-then-GELU: bounded below by GELU's minimum
    assert out.min() > -0.2


def test_terminator_forward_backward_and_state_dict():
    model = _tiny()
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    logits = model(x)
    assert logits.shape == (5, 3)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the slow nets get gradient through the fast network (they are trained end to end)
    assert model.blocks[0].slow_global.output.weight.grad.abs().sum() > 0
    clone = _tiny(widths=(3,))
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    torch.testing.assert_close(clone(x), model(x))


def test_batch_permutation_equivariant():
    # the local hyper-kernels use the batch-mean context (official MAGNet_L), so outputs depend
    # on the batch as a set, never on its order
    model = _tiny().eval()
    x = torch.randn(6, 1, 6, 6)
    perm = torch.randperm(6)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[perm], model(x[perm]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("build", [
    lambda: Terminator(widths=()),
    lambda: Terminator(num_classes=1),
    lambda: Terminator(widths=(0,)),
    lambda: SFNEBlock(4, 8, size=0),
    lambda: LocalHyperZZW(4, kernel_size=2),
    lambda: MAGNet(5, 3, omega_0=-1.0),
    lambda: MAGNet(5, 3, hidden=2.5),
])
def test_bad_arguments(build):
    with pytest.raises(PriorlabError):
        build()


def test_bad_inputs():
    model = _tiny()
    with pytest.raises(PriorlabError):
        model(torch.randn(2, 1, 5, 5))  # wrong image size for the global hyper-kernel
    with pytest.raises(PriorlabError):
        model(torch.randn(2, 2, 6, 6))  # wrong channels
    with pytest.raises(PriorlabError):
        model(torch.full((2, 1, 6, 6), float("nan")))
    with pytest.raises(PriorlabError):
        model(torch.ones(2, 1, 6, 6, dtype=torch.long))


def test_global_operator_bad_shapes():
    z = torch.randn(2, 3, 4, 4)
    with pytest.raises(PriorlabError):
        hyperzzw_global(z, torch.randn(1, 3, 4, 4), torch.randn(2, 3, 4, 5))
    with pytest.raises(PriorlabError):
        hyperzzw_global(z, torch.randn(1, 3, 5, 5), z)
    with pytest.raises(PriorlabError):
        hyperzzw_global(z[0], torch.randn(1, 3, 4, 4), z)


def test_resnet_baseline_matches_parameters():
    terminator = p017_hyperzzw._terminator(p017_hyperzzw.CLAIM.tiers["full"], 10, 28)
    target = p017_hyperzzw.n_params(terminator)
    width = p017_hyperzzw.matched_resnet_width(target, 10, 2)
    resnet = p017_hyperzzw.ResNet(10, width, 2)
    assert abs(p017_hyperzzw.n_params(resnet) - target) / target < 0.1
    assert resnet(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_repro_arms_differ_and_tuning_reported():
    cfg = {**p017_hyperzzw.CLAIM.tiers["smoke"], "steps": 2, "eval_every": 2}
    outs = {arm: p017_hyperzzw.run(arm, cfg, seed=0) for arm in p017_hyperzzw.ARMS}
    assert outs["terminator"].info["n_params"] != outs["resnet"].info["n_params"]
    assert outs["terminator"].info["terminator_params"] == outs["resnet"].info["terminator_params"]
    for out in outs.values():
        assert out.tuning["lr"]["selected"] in out.tuning["lr"]["grid"]
        assert 0.0 <= out.metrics["test_acc"] <= 1.0
    with pytest.raises(PriorlabError):
        p017_hyperzzw.run("terminater", cfg, seed=0)


def test_card_registered():
    card = get("hyperzzw-terminator")
    assert card.paper.seed_id == 17 and card.reproduction == "p017_hyperzzw"
