import math

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.functional.distill import distillation_loss
from priorlab.hooks import StepContext
from priorlab.methods.random_teacher import RandomTeacher, neighbourhood_init
from priorlab.nn.dino_head import DinoHead, DinoModel
from priorlab.reproductions import p005_random_teacher as repro


def _model(seed):
    torch.manual_seed(seed)
    return DinoModel(torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU()),
                     DinoHead(8, 6, hidden_dims=(8,), bottleneck_dim=4))


def test_distillation_loss_known_value():
    # teacher logits (0, log 3) at tau_t=1 -> targets (1/4, 3/4); student uniform over 2 -> log 2
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    student = torch.zeros(1, 2)
    assert distillation_loss(student, teacher).item() == pytest.approx(math.log(2.0))
    # tau_t = 0.5 sharpens to (1/10, 9/10); student logits (0, log 9) at tau_s=1 -> same dist
    loss = distillation_loss(torch.tensor([[0.0, math.log(9.0)]]), teacher, tau_t=0.5)
    entropy = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    assert loss.item() == pytest.approx(entropy, rel=1e-6)


def test_distillation_loss_gradient_only_to_student_and_zero_at_match():
    s = torch.randn(4, 7, requires_grad=True)
    t = torch.randn(4, 7, requires_grad=True)
    distillation_loss(s, t).backward()
    assert t.grad is None and torch.isfinite(s.grad).all()
    s2 = t.detach().clone().requires_grad_(True)
    distillation_loss(s2, t).backward()
    assert s2.grad.abs().max() < 1e-7  # softmax(s) - softmax(t) = 0


def test_dino_head_weight_normalised_output_is_bounded_cosine():
    head = DinoHead(8, 6, hidden_dims=(8,), bottleneck_dim=4, weight_norm_last=True)
    out = head(100 * torch.randn(3, 8))
    assert out.shape == (3, 6) and out.abs().max() <= 1 + 1e-6  # unit bottleneck, unit rows
    with pytest.raises(PriorlabError):
        head(torch.randn(3, 5))


def test_dino_head_last_layer_uses_raw_weight_by_default():
    # the official Linear.forward ignores the normalised weight: logits = W2 b with b unit-norm
    torch.manual_seed(0)
    x = torch.randn(5, 8)
    raw, normed = DinoHead(8, 4, (8,), 4), DinoHead(8, 4, (8,), 4, weight_norm_last=True)
    normed.load_state_dict(raw.state_dict())
    with torch.no_grad():
        raw.last_layer.weight.copy_(3 * torch.eye(4))
        normed.last_layer.weight.copy_(3 * torch.eye(4))
        bottleneck = torch.nn.functional.normalize(raw.to_bottleneck(raw.mlp(x)), dim=-1)
        torch.testing.assert_close(raw(x), 3 * bottleneck)
        torch.testing.assert_close(normed(x), bottleneck)


def test_dino_head_trunc_normal_init_matches_official_values():
    torch.manual_seed(0)
    head = DinoHead(256, 4096, hidden_dims=(512,), bottleneck_dim=256)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert abs(weights.mean().item()) < 1e-4
    assert weights.abs().max() <= 2.0  # the official cut is at +-2 absolute (= 100 std) ...
    beyond_two_std = (weights.abs() > 0.04).float().mean().item()
    assert 0.04 < beyond_two_std < 0.051  # ... so ~4.55 % lie beyond 2 std, as for a plain normal
    biases = [m.bias for m in linears if m.bias is not None]
    assert len(biases) == 2 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


def test_dino_head_default_init_is_torch_uniform():
    torch.manual_seed(0)
    head = DinoHead(64, 32, hidden_dims=(128,), bottleneck_dim=16, init="default")
    for m in head.modules():
        if isinstance(m, torch.nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
            if m.bias is not None:
                assert m.bias.abs().max() > 0


def test_random_teacher_is_frozen_and_only_student_changes():
    teacher = _model(1)
    adapter = RandomTeacher(teacher)
    student = _model(0)
    t_before = [p.clone() for p in adapter.teacher.parameters()]
    opt = torch.optim.AdamW(student.parameters(), lr=1e-2, weight_decay=0.0)
    x = torch.randn(16, 5)
    for step in range(5):
        out = student(x)
        loss = adapter.loss_terms(StepContext(model=student, optimizer=opt, inputs=x,
                                              outputs=out))["distill"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(t_before, adapter.teacher.parameters()))
    assert all(not p.requires_grad for p in adapter.teacher.parameters())
    assert adapter.teacher is not teacher  # a copy: the caller's module is untouched
    fresh = RandomTeacher(_model(2))
    fresh.load_state_dict(adapter.state_dict())
    assert torch.equal(fresh.teacher(x), adapter.teacher(x))


def test_neighbourhood_init_formula():
    teacher, student = _model(1), _model(0)
    fresh = [p.clone() for p in student.parameters()]
    neighbourhood_init(student, teacher, eps=0.5)  # official default: no variance correction
    for p_s, p_t, p_0 in zip(student.parameters(), teacher.parameters(), fresh):
        torch.testing.assert_close(p_s, p_t + 0.5 * p_0)
    student = _model(0)
    neighbourhood_init(student, teacher, eps=0.5, variance_preserving=True)
    for p_s, p_t, p_0 in zip(student.parameters(), teacher.parameters(), fresh):
        torch.testing.assert_close(p_s, (p_t + 0.5 * p_0) / math.sqrt(1.25))
    neighbourhood_init(student, teacher, eps=0.0)
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters()))


@pytest.mark.parametrize("bad", [
    lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), tau_s=0.0),
    lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), tau_t=float("nan")),
    lambda: distillation_loss(torch.zeros(3), torch.zeros(3)),
    lambda: distillation_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)),
    lambda: DinoHead(0, 4),
    lambda: DinoHead(4, 4, init="xavier"),
    lambda: DinoHead(4, 4, weight_norm_last="yes"),
    lambda: neighbourhood_init(_model(0), _model(1), eps=0.1, variance_preserving=1),
    lambda: RandomTeacher(_model(0)).load_state_dict({}),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_smoke_all_arms():
    cfg = repro.CLAIM.tiers["smoke"]
    outs = {arm: repro.run(arm, cfg, seed=0) for arm in repro.CLAIM.arms}
    for out in outs.values():
        assert {"probe_acc", "knn_acc"} <= set(out.metrics)
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert 0.5 < out.metrics["probe_acc"] <= 1.0  # digits are linearly decodable
        assert out.resolution["probe_acc"] == pytest.approx(1 / 360)  # 360 digits test images
    # the method arms train away from the baseline at the same seed (same teacher, same data)
    scores = {arm: (o.metrics["probe_acc"], o.metrics["knn_acc"]) for arm, o in outs.items()}
    assert scores["student"] != scores["teacher"]
    assert scores["near_init_student"] != scores["student"]
    assert scores["noise_student"] != scores["student"]
    loss_curve = outs["student"].curves["distill_loss"]["y"]
    assert loss_curve[-1] < loss_curve[0]  # the student moves towards its teacher
    with pytest.raises(PriorlabError):
        repro.run("studnet", cfg, 0)


def test_claim_declares_official_defaults_and_covers_every_clause():
    claim = repro.CLAIM
    assert claim.revision >= 2
    named = {c.clause for c in claim.comparisons} | {u.clause for u in claim.untested}
    assert named == set(claim.clauses)
    assert claim.budget.under  # 10 of the official 100 epochs
    full = claim.tiers["full"]
    assert full["head_init"] == "trunc_normal" and full["last_weight_norm"] is False
    assert full["var_preserving"] is False


# ------------------------------------------------------------------ issue 16: no silent NaN

def test_distillation_loss_refuses_an_empty_batch():
    # the mean over no rows was NaN
    with pytest.raises(PriorlabError, match=r"^distillation_loss: student_logits is empty"):
        distillation_loss(torch.zeros(0, 5), torch.zeros(0, 5))


def test_distillation_loss_refuses_logits_that_overflow_their_temperature():
    # float16 logits of 5e3 over tau 0.04 are inf, and softmax(inf) is NaN
    student = torch.randn(2, 3).half()
    teacher = torch.tensor([[5e3, 0.0, 0.0], [0.0, 1.0, 2.0]]).half()
    with pytest.raises(PriorlabError, match=r"^distillation_loss: teacher_logits / tau_t contains"):
        distillation_loss(student, teacher, tau_s=0.1, tau_t=0.04)
    assert torch.isfinite(distillation_loss(student.float(), teacher.float(), 0.1, 0.04))
