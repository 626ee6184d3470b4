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


def test_dino_head_output_is_bounded_cosine():
    head = DinoHead(8, 6, hidden_dims=(8,), bottleneck_dim=4)
    out = head(100 * torch.randn(3, 8))
    assert out.shape == (3, 6) and out.abs().max() <= 1 + 1e-6  # unit bottleneck, unit rows
    with pytest.raises(PriorlabError):
        head(torch.randn(3, 5))


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
        opt.zero_grad(); loss.backward(); opt.step()
    assert all(torch.equal(a, b) for a, b in zip(t_before, adapter.teacher.parameters()))
    assert all(not p.requires_grad for p in adapter.teacher.parameters())
    assert adapter.teacher is not teacher  # a copy: the caller's module is untouched
    fresh = RandomTeacher(_model(2))
    fresh.load_state_dict(adapter.state_dict())
    assert torch.equal(fresh.teacher(x), adapter.teacher(x))


def test_neighbourhood_init_formula():
    teacher, student = _model(1), _model(0)
    fresh = [p.clone() for p in student.parameters()]
    neighbourhood_init(student, teacher, eps=0.5)
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
    lambda: RandomTeacher(_model(0)).load_state_dict({}),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_smoke_all_arms():
    cfg = repro.CLAIM.tiers["smoke"]
    for arm in repro.CLAIM.arms:
        out = repro.run(arm, cfg, seed=0)
        assert {"probe_acc", "knn_acc"} <= set(out.metrics)
        assert all(math.isfinite(v) for v in out.metrics.values())
        assert 0.5 < out.metrics["probe_acc"] <= 1.0  # digits are linearly decodable
    with pytest.raises(PriorlabError):
        repro.run("studnet", cfg, 0)
