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

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.validation import check_finite, check_number, check_tensor

_WHO = "distillation_loss"


def _check_temperature(name: str, value) -> float:
    return check_number(value, name, who=_WHO, low=0, low_open=True,
                        hint="the random-teacher paper uses 1.0")


def _check_logits(name: str, logits) -> torch.Tensor:
    # an empty batch would average over nothing (NaN)
    return check_tensor(logits, name, who=_WHO, min_ndim=2, dtype="float", non_empty=True,
                        finite=True, hint="pass (batch, classes) logits from the model")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      tau_s: float = 1.0, tau_t: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy ``H(softmax(t/tau_t), softmax(s/tau_s))`` over the batch (last dim = classes).

    The teacher side is detached, so only the student receives gradients.
    """
    tau_s = _check_temperature("tau_s", tau_s)
    tau_t = _check_temperature("tau_t", tau_t)
    student_logits = _check_logits("student_logits", student_logits)
    teacher_logits = _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise PriorlabError(f"{_WHO}: student_logits {tuple(student_logits.shape)} and teacher_logits "
                            f"{tuple(teacher_logits.shape)} differ in shape; both networks need "
                            "the same output dimension and the same batch")
    # huge logits over a small temperature overflow the dtype, and softmax of inf is NaN
    hint = "the logits are too large for this temperature and dtype; use float32/64 or a larger tau"
    teacher = check_finite(teacher_logits.detach() / tau_t, "teacher_logits / tau_t", who=_WHO, hint=hint)
    student = check_finite(student_logits / tau_s, "student_logits / tau_s", who=_WHO, hint=hint)
    targets = F.softmax(teacher, dim=-1)
    log_preds = F.log_softmax(student, dim=-1)
    return -(targets * log_preds).sum(-1).mean()
