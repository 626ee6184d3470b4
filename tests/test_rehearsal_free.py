"""Rehearsal-free CL regularisers (paper 20): known values, invariants, errors, adapters."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.continual.regularisers import (
    ATTENTION_QKV,
    ParameterAnchor,
    diagonal_fisher,
    feature_distillation,
    prediction_distillation,
    select_parameters,
)
from priorlab.errors import PriorlabError
from priorlab.methods.rehearsal_free import (
    AnchorPenalty,
    FeatureDistillation,
    PredictionDistillation,
)
from priorlab.nn.attention_vit import AttentionViT
from priorlab.train import fit


def _vit(seed=0):
    torch.manual_seed(seed)
    return AttentionViT(4, image_size=8, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=16)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_select_qkv_parameters():
    names = set(select_parameters(_vit(), ATTENTION_QKV))
    expected = {f"blocks.{b}.attn.{p}.{w}" for b in range(2) for p in ("query", "key", "value")
                for w in ("weight", "bias")}
    assert names == expected
    with pytest.raises(PriorlabError, match="no trainable parameter"):
        select_parameters(_vit(), "nothing_here")


def test_l2_anchor_known_value_and_gradient():
    model = nn.Linear(2, 1)
    anchor = ParameterAnchor(model)
    assert float(anchor.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.weight += torch.tensor([[1.0, 2.0]])
        model.bias -= 3.0
    penalty = anchor.penalty(model)
    assert float(penalty.detach()) == pytest.approx(1 + 4 + 9)
    penalty.backward()
    torch.testing.assert_close(model.weight.grad, torch.tensor([[2.0, 4.0]]))


def test_ewc_anchor_weights_and_accumulates():
    model = nn.Linear(2, 1, bias=False)
    ones = {"weight": torch.tensor([[1.0, 0.0]])}
    anchor = ParameterAnchor(model, importance=ones)
    with torch.no_grad():
        model.weight += torch.tensor([[2.0, 5.0]])
    assert float(anchor.penalty(model).detach()) == pytest.approx(4.0)  # the zero-importance weight is free
    anchor.consolidate(model, {"weight": torch.tensor([[0.5, 1.0]])})
    torch.testing.assert_close(anchor.importance["weight"], torch.tensor([[1.5, 1.0]]))
    assert float(anchor.penalty(model).detach()) == 0.0  # re-anchored to the current weights
    with pytest.raises(PriorlabError, match="weighted"):
        anchor.consolidate(model)
    with pytest.raises(PriorlabError, match="negative"):
        ParameterAnchor(model, importance={"weight": -torch.ones(1, 2)})
    with pytest.raises(PriorlabError, match="exactly"):
        ParameterAnchor(model, importance={"bias": torch.ones(1)})
    with pytest.raises(PriorlabError, match="unweighted"):
        ParameterAnchor(model).consolidate(model, ones)
    with pytest.raises(PriorlabError, match="same way"):
        ParameterAnchor(model).load_state_dict(anchor.state_dict())


def test_anchor_state_dict_round_trip():
    model = _vit()
    anchor = ParameterAnchor(model, ATTENTION_QKV)
    state = anchor.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    other = ParameterAnchor(model, ATTENTION_QKV)
    other.load_state_dict(state)
    assert float(other.penalty(model).detach()) == pytest.approx(float(anchor.penalty(model).detach()))


def test_diagonal_fisher_matches_hand_computation():
    model = nn.Linear(3, 2)
    x = torch.randn(5, 3)
    fisher = diagonal_fisher(model, x)
    expected = torch.zeros_like(model.weight)
    for xi in x:
        log_p = F.log_softmax(model(xi[None]), 1)
        (g,) = torch.autograd.grad(-log_p[0, log_p.argmax()], model.weight)
        expected += g ** 2 / len(x)
    torch.testing.assert_close(fisher["weight"], expected)
    assert set(fisher) == {"weight", "bias"} and all(bool((f >= 0).all()) for f in fisher.values())
    restricted = diagonal_fisher(model, x, classes=[1])  # one allowed class: log p = 0
    assert float(restricted["weight"].abs().sum()) == 0.0
    assert set(diagonal_fisher(_vit(), _batch()[0], pattern=ATTENTION_QKV)) == \
        set(select_parameters(_vit(), ATTENTION_QKV))


def test_prediction_distillation_known_values():
    logits = torch.randn(4, 3)
    assert float(prediction_distillation(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    # KL([3/4, 1/4] || [1/2, 1/2]) at T = 1
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert float(prediction_distillation(s, t, temperature=1.0)) == pytest.approx(expected)
    s.requires_grad_(True)
    t.requires_grad_(True)
    prediction_distillation(s, t).backward()
    assert s.grad is not None and t.grad is None  # the teacher is detached
    with pytest.raises(PriorlabError):
        prediction_distillation(torch.zeros(2, 3), torch.zeros(2, 3), temperature=-1.0)
    with pytest.raises(PriorlabError):
        prediction_distillation(torch.zeros(2, 3), torch.full((2, 3), float("nan")))


def test_feature_distillation_known_value():
    assert float(feature_distillation(torch.ones(2, 2), torch.zeros(2, 2))) == 1.0
    with pytest.raises(PriorlabError, match="same shape"):
        feature_distillation(torch.ones(2, 2), torch.zeros(2, 3))


def _fit(model, adapters, steps=5):
    x, y = _batch()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return fit(model, [(x, y)], optimizer, F.cross_entropy, epochs=steps, adapters=adapters,
               show_progress=False)


def test_anchor_penalty_pulls_towards_the_anchor():
    def drift(strength):
        model = _vit()
        start = {n: p.detach().clone() for n, p in select_parameters(model, ATTENTION_QKV).items()}
        _fit(model, [AnchorPenalty(strength, pattern=ATTENTION_QKV)], steps=15)
        now = select_parameters(model, ATTENTION_QKV)
        return sum(float((now[n] - start[n]).pow(2).sum()) for n in start)
    assert drift(10.0) < 0.5 * drift(0.0)


def test_distillation_adapters_train_and_differ_from_plain():
    teacher = _vit(seed=1)
    plain, pred, feat = _vit(), _vit(), _vit()
    _fit(plain, [])
    history = _fit(pred, [PredictionDistillation(teacher, [0, 1], 1.0)])
    feat_adapter = FeatureDistillation(teacher, 1.0)
    feat_history = _fit(feat, [feat_adapter])
    feat_adapter.remove()
    assert all(math.isfinite(v) for v in history["loss/pred_kd"] + feat_history["loss/feat_kd"])
    assert history["loss/pred_kd"][0] > 0 and feat_history["loss/feat_kd"][0] > 0
    for other in (pred, feat):
        assert not torch.allclose(plain.classifier.weight, other.classifier.weight)
    assert not feat.classifier._forward_pre_hooks  # remove() detached the feature hook


def test_adapter_bad_input():
    with pytest.raises(PriorlabError):
        AnchorPenalty(-0.1)
    with pytest.raises(PriorlabError, match="empty"):
        PredictionDistillation(_vit(), [], 1.0)
    with pytest.raises(PriorlabError, match="no submodule"):
        _fit(_vit(), [FeatureDistillation(_vit(), 1.0, feature_module="head")])


def test_reproduction_arms_differ_on_smoke_tier():
    from priorlab.reproductions.p020_rehearsal_free import CLAIM, run
    cfg = CLAIM.tiers["smoke"]
    fine, qkv = run("finetune", cfg, 0), run("l2_qkv", cfg, 0)
    assert fine.info["R_test"] != qkv.info["R_test"]
    assert qkv.tuning["strength"]["grid"] == cfg["grids"]["l2"]
    assert 0.0 <= qkv.metrics["avg_acc"] <= 1.0
