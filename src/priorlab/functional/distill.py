"""Self-distillation loss of DINO as used with a frozen random teacher.

Sarnthein, Bachmann, Anagnostidis & Hofmann, "Random Teachers are Good Teachers", ICML 2023,
arXiv:2302.12091 (official code: github.com/safelix/dinopl, ``DINO.multicrop_loss``). With a
single view and no centering, the student minimises the cross-entropy from the teacher's
sharpened distribution to its own::

    L = mean_i  -sum_k softmax(t_i / tau_t)_k * log softmax(s_i / tau_s)_k

The teacher's logits carry no gradient. The official random-teacher configuration uses
``tau_s = tau_t = 1`` (configs/cifar10_distillation_v2.json); DINO's defaults are 0.1 / 0.04.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError


def _check_temperature(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise PriorlabError(f"{name} must be a finite temperature > 0, got {value!r} "
                            "(the random-teacher paper uses 1.0)")
    return float(value)


def _check_logits(name: str, logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 2:
        got = (f"{logits.dtype} tensor of shape {tuple(logits.shape)}"
               if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise PriorlabError(f"{name} must be a floating-point (batch, classes) tensor, got {got}")
    if not torch.isfinite(logits).all():
        raise PriorlabError(f"{name} hold NaN or inf; check the model's outputs and learning rate")
    return logits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      tau_s: float = 1.0, tau_t: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy ``H(softmax(t/tau_t), softmax(s/tau_s))`` over the batch (last dim = classes).

    The teacher side is detached, so only the student receives gradients.
    """
    tau_s = _check_temperature("tau_s", tau_s)
    tau_t = _check_temperature("tau_t", tau_t)
    student_logits = _check_logits("student logits", student_logits)
    teacher_logits = _check_logits("teacher logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise PriorlabError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                            f"{tuple(teacher_logits.shape)} differ in shape; both networks need "
                            "the same output dimension and the same batch")
    targets = F.softmax(teacher_logits.detach() / tau_t, dim=-1)
    log_preds = F.log_softmax(student_logits / tau_s, dim=-1)
    return -(targets * log_preds).sum(-1).mean()
