"""PER (seed 66): projections, penalties, automatic strengths, equivariance, reproduction smoke."""

import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.nn.soft_equivariance import (
    GROUPS,
    AutoStrength,
    GatedTensorMLP,
    SoftEquivariantLinear,
    TensorRep,
    block_projector,
    per_decay_,
    per_penalties,
    project_bias,
    project_model_,
    project_weight,
)
from priorlab.registry import get
from priorlab.reproductions import p066_per

REP_IN, REP_OUT = TensorRep((2, 2)), TensorRep((0, 0, 1))


def _rotation(axis: int, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    q = torch.eye(3, dtype=torch.float64)
    q[i, i], q[i, j], q[j, i], q[j, j] = c, -s, s, c
    return q


def _model(**kwargs):
    torch.manual_seed(0)
    return GatedTensorMLP(REP_IN, REP_OUT, channels=(3, 2, 2), depth=2, **kwargs).double()


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_block_projectors_are_orthogonal_projections(group):
    for rank_out in range(3):
        for rank_in in range(3):
            p = block_projector(group, rank_out, rank_in)
            torch.testing.assert_close(p @ p, p, rtol=0, atol=1e-10)
            torch.testing.assert_close(p, p.T, rtol=0, atol=1e-12)


def test_known_dimensions_of_equivariant_maps():
    # O(3): vector->vector only multiples of I; matrix->matrix: identity, transpose, trace part;
    # vector->matrix: none (parity); SO(3) allows the Levi-Civita map. O(2) fixing z:
    # vector->vector is a I_xy + b e_z e_z^T, scalar->vector is c e_z.
    def dim(g, ro, ri):
        return round(float(block_projector(g, ro, ri).trace()))
    assert (dim("o3", 1, 1), dim("o3", 2, 2), dim("o3", 2, 1), dim("o3", 2, 0)) == (1, 3, 0, 1)
    assert dim("so3", 2, 1) == 1
    assert (dim("o2_z", 1, 1), dim("o2_z", 1, 0)) == (2, 1)
    z = torch.zeros(3, dtype=torch.float64)
    z[2] = 1.0
    torch.testing.assert_close(block_projector("o2_z", 1, 0) @ z, z)
    # a known small case: P_O3 of a 3x3 map keeps its trace part only
    w = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    expected = torch.eye(3, dtype=torch.float64) * torch.trace(w) / 3
    torch.testing.assert_close(project_weight(w, "o3", TensorRep((0, 1)), TensorRep((0, 1))), expected)


def test_equivariant_weights_have_zero_penalty_and_projection_is_idempotent():
    model = _model()
    project_model_(model, "o3")
    pens = per_penalties(model, ("o3", "o2_x", "o2_y", "o2_z"))
    assert all(float(v.detach()) < 1e-20 for v in pens.values())
    layer = model[0].linear
    once = project_weight(layer.weight, "o2_z", layer.rep_in, layer.rep_out)
    twice = project_weight(once, "o2_z", layer.rep_in, layer.rep_out)
    torch.testing.assert_close(once, twice)


def test_penalty_matches_its_definition_and_nests():
    model = _model()
    pens = per_penalties(model, ("o3", "o2_z"))
    for g in ("o3", "o2_z"):
        ref = sum(0.5 * ((m.weight - project_weight(m.weight, g, m.rep_in, m.rep_out)).pow(2).sum()
                         + (m.bias - project_bias(m.bias, g, m.rep_out)).pow(2).sum())
                  for m in model.modules() if isinstance(m, SoftEquivariantLinear))
        torch.testing.assert_close(pens[g], ref)
    # O(3)-equivariant maps are O(2)_z-equivariant: the O(3) violation is the larger one
    assert float(pens["o3"].detach()) > float(pens["o2_z"].detach()) > 0


def test_exact_models_are_equivariant_to_their_group_only():
    x = torch.randn(6, REP_IN.dim, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rz = _rotation(2, 0.7)
    o3, o2z = _model(exact="o3"), _model(exact="o2_z")
    for model, g in ((o3, q), (o3, rz), (o2z, rz)):
        torch.testing.assert_close(model(x @ REP_IN.action(g).T), model(x) @ REP_OUT.action(g).T)
    assert o3(x).abs().max() > 1e-6  # not trivially zero
    err = o2z(x @ REP_IN.action(q).T) - o2z(x) @ REP_OUT.action(q).T
    assert err.abs().max() > 1e-6


def test_gradient_of_penalty_is_the_residual():
    layer = SoftEquivariantLinear(TensorRep((1, 1)), TensorRep((0, 1))).double()
    (grad,) = torch.autograd.grad(per_penalties(layer, ("o3",))["o3"], layer.weight)
    expected = layer.weight - project_weight(layer.weight, "o3", layer.rep_in, layer.rep_out)
    torch.testing.assert_close(grad, expected.detach())


def test_auto_strength_relaxes_the_broken_groups():
    tuner = AutoStrength({"o3": 100.0, "o2_x": 100.0, "o2_z": 100.0}, power=2.0)
    tuner.observe({"o3": 0.4, "o2_x": 0.2, "o2_z": 0.1})
    tuner.observe({"o3": 0.5, "o2_x": 0.3, "o2_z": 0.05})  # minima kept per group
    out = tuner.adjust()
    assert out == pytest.approx({"o3": 100 / 64, "o2_x": 100 / 16, "o2_z": 100.0})
    with pytest.raises(PriorlabError):
        tuner.adjust()
    zero = AutoStrength({"o3": 0.0, "o2_z": 1.0})  # a zero strength stays zero
    zero.observe({"o3": 0.0, "o2_z": 0.3})
    assert zero.adjust() == {"o3": 0.0, "o2_z": 1.0}
    restored = AutoStrength({"o3": 1.0})
    restored.load_state_dict(tuner.state_dict())
    assert restored.strengths == tuner.strengths and restored.adjusted


def test_zero_strength_decay_is_identity_and_full_decay_projects():
    model = _model()
    before = [p.clone() for p in model.parameters()]
    per_decay_(model, {"o3": 0.0}, lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    per_decay_(model, {"o3": 10.0}, lr=1.0)  # rate capped at 1: a full projection
    assert float(per_penalties(model, ("o3",))["o3"].detach()) < 1e-20


@pytest.mark.parametrize("bad", [
    lambda: TensorRep(()),
    lambda: TensorRep((1.5,)),
    lambda: SoftEquivariantLinear(REP_IN, REP_OUT, exact="o4"),
    lambda: per_penalties(_model(), ()),
    lambda: project_weight(torch.zeros(2, 2), "o3", REP_IN, REP_OUT),
    lambda: AutoStrength({"o3": float("nan")}),
    lambda: AutoStrength({"o3": 1.0}).observe({"o2_z": 1.0}),
    lambda: project_model_(torch.nn.Linear(2, 2), "o3"),
])
def test_bad_arguments(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_unknown_group_suggests_a_name():
    with pytest.raises(PriorlabError, match="o2_z"):
        per_penalties(_model(), ("o2z",))


def test_card_points_at_component_and_reproduction():
    card = get("per")
    assert card.seed_id == 66 and card.component is per_penalties
    assert p066_per.CLAIM.method == card.id


def test_inertia_data_has_the_stated_symmetry():
    x, y = p066_per.inertia_data(8, 0.3, torch.Generator().manual_seed(0))
    rep_in, rep_out = TensorRep((5, 5)), TensorRep((0, 0, 1))
    rz, rx = _rotation(2, 0.9).float(), _rotation(0, 0.9).float()

    def target(xs):  # the same formula, written out, applied to rotated inputs
        m, r = xs[:, :5], xs[:, 5:].reshape(-1, 5, 3)
        eye = torch.eye(3)
        inertia = (m[..., None, None] * (r.pow(2).sum(-1)[..., None, None] * eye
                                          - r[..., :, None] * r[..., None, :])).sum(1)
        return (inertia + 0.3 * inertia[:, :, 2:3] * eye[2]).reshape(-1, 9)
    torch.testing.assert_close(target(x), y)
    torch.testing.assert_close(target(x @ rep_in.action(rz).T), y @ rep_out.action(rz).T,
                               rtol=1e-4, atol=1e-4)
    assert (target(x @ rep_in.action(rx).T) - y @ rep_out.action(rx).T).abs().max() > 1e-2


def test_reproduction_smoke_all_arms():
    claim = p066_per.CLAIM
    cfg = claim.tiers["smoke"]
    outs = {arm: p066_per.run(arm, dict(cfg), 0) for arm in claim.arms}
    for arm, out in outs.items():
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
    assert "lambda_z_log_ratio" in outs["per_auto"].metrics
    assert outs["per_auto"].metrics["test_mse"] != outs["exact_o3"].metrics["test_mse"]
    with pytest.raises(PriorlabError):
        p066_per.run("per", dict(cfg), 0)


def test_per_penalties_reject_bad_groups_and_non_finite_weights():
    model = _model()
    with pytest.raises(PriorlabError, match="groups"):
        per_penalties(model, 1.5)
    with torch.no_grad():
        next(m for m in model.modules() if isinstance(m, SoftEquivariantLinear)).weight[0, 0] = math.nan
    with pytest.raises(PriorlabError, match="weight"):
        per_penalties(model, ("o3",))
