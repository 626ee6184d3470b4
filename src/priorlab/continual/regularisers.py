"""Rehearsal-free continual-learning regularisers: parameter anchors and distillation losses.

Smith, Tian, Halbe, Hsu & Kira, "A Closer Look at Rehearsal-Free Continual Learning", CVPR
Workshops 2023, arXiv:2203.17269. The paper compares four ways of keeping what earlier tasks
taught without storing their data, each added to the task loss with a strength ``lambda``:

- L2 parameter regularisation: ``lambda * sum_k (theta_k - theta*_k)^2`` with ``theta*`` the
  parameters after the previous task (or the pretrained ones before the first);
- EWC: the same distance weighted by a diagonal Fisher information ``F_k``,
  ``lambda * sum_k F_k (theta_k - theta*_k)^2`` (Kirkpatrick et al., PNAS 2017);
- prediction distillation (LwF, Li & Hoiem 2016): the new model's predictions on the previous
  classes follow the previous model's, ``lambda * T^2 KL(p_old^T || p_new^T)`` on the current
  data, with temperature ``T``;
- feature distillation: ``lambda * mean (h_new(x) - h_old(x))^2`` on the penultimate features.

Its finding: with a pretrained encoder, plain L2 beats EWC and feature distillation, and L2
applied to the query/key/value projections of a ViT's self-attention blocks beats prompting
methods. :func:`select_parameters` with a regular expression (e.g. :data:`ATTENTION_QKV` for
:class:`priorlab.nn.attention_vit.AttentionViT`) restricts an anchor to such a subset.

These are pure pieces: no training loop. :mod:`priorlab.methods.rehearsal_free` wraps them as
training-loop adapters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

# query / key / value projections of every block of priorlab.nn.attention_vit.AttentionViT
ATTENTION_QKV = r"\.attn\.(query|key|value)\."


def select_parameters(model: nn.Module, pattern: str | None = None) -> dict[str, nn.Parameter]:
    """The trainable parameters of ``model`` whose names match ``pattern`` (``re.search``;
    ``None``: all of them), by name. Raises when nothing matches."""
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"select_parameters: model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
    if pattern is not None and not isinstance(pattern, str):
        raise PriorlabError(f"select_parameters: pattern must be a regular expression string or "
                            f"None, got {type(pattern).__name__}")
    try:
        regex = None if pattern is None else re.compile(pattern)
    except re.error as e:
        raise PriorlabError(f"select_parameters: pattern {pattern!r} is not a regular "
                            f"expression ({e})") from e
    selected = {name: p for name, p in model.named_parameters()
                if p.requires_grad and (regex is None or regex.search(name))}
    if not selected:
        names = [name for name, _ in model.named_parameters()][:8]
        raise PriorlabError(f"select_parameters: no trainable parameter matches {pattern!r}; "
                            f"the model's parameters are named like {names}")
    return selected


class ParameterAnchor:
    """Penalty ``sum_k importance_k (theta_k - reference_k)^2`` over the parameters matching
    ``pattern``; the strength ``lambda`` is applied by the caller.

    Built from ``model``, the reference is a copy of its current parameters. Without
    ``importance`` every weight counts 1 (L2); with a diagonal Fisher (:func:`diagonal_fisher`)
    it is EWC. After each task call :meth:`consolidate` to move the reference to the new
    parameters and, for EWC, add the new task's Fisher to the importance (online EWC with no
    decay: the importances of all tasks so far are summed).
    """

    def __init__(self, model: nn.Module, pattern: str | None = None,
                 importance: dict[str, torch.Tensor] | None = None):
        self.pattern = pattern
        self.names = tuple(select_parameters(model, pattern))
        self.weighted = importance is not None
        self.reference: dict[str, torch.Tensor] = {}
        self.importance: dict[str, torch.Tensor] | None = None
        self.consolidate(model, importance)

    def consolidate(self, model: nn.Module, importance: dict[str, torch.Tensor] | None = None) -> None:
        """Anchor to ``model``'s current parameters; add ``importance`` to the stored one."""
        if (importance is not None) != self.weighted:
            raise PriorlabError("ParameterAnchor.consolidate: " + (
                "this anchor is weighted (EWC); pass the new task's importance (diagonal_fisher)"
                if self.weighted else "this anchor is unweighted (L2); it takes no importance"))
        params = self._params(model)
        self.reference = {name: p.detach().clone() for name, p in params.items()}
        if importance is not None:
            checked = self._checked_importance(importance, params)
            self.importance = checked if self.importance is None else \
                {n: self.importance[n] + checked[n] for n in self.names}

    def _params(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(model.named_parameters())
        missing = [n for n in self.names if n not in params]
        if missing:
            raise PriorlabError(f"ParameterAnchor: the model lacks parameter(s) {missing[:4]} it "
                                "was anchored to; use the same architecture")
        return {n: params[n] for n in self.names}

    def _checked_importance(self, importance, params) -> dict[str, torch.Tensor]:
        if not isinstance(importance, dict) or set(importance) != set(self.names):
            got = sorted(importance) if isinstance(importance, dict) else type(importance).__name__
            raise PriorlabError(f"ParameterAnchor: importance must map exactly the anchored "
                                f"parameter names {list(self.names)[:4]}... to tensors, got {got}")
        checked = {}
        for name in self.names:
            value = check_tensor(importance[name], f"importance[{name!r}]", who="ParameterAnchor",
                                 shape=tuple(params[name].shape), dtype="float", finite=True)
            if bool((value < 0).any()):
                raise PriorlabError(f"ParameterAnchor: importance[{name!r}] has negative entries; "
                                    "a Fisher diagonal is >= 0")
            checked[name] = value.detach().clone()
        return checked

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``sum_k importance_k (theta_k - reference_k)^2`` (a scalar with gradients)."""
        params = self._params(model)
        total = None
        for name, p in params.items():
            sq = (p - self.reference[name]).pow(2)
            term = (sq if self.importance is None else self.importance[name] * sq).sum()
            total = term if total is None else total + term
        return total

    def state_dict(self) -> dict:
        return {"pattern": self.pattern, "names": list(self.names),
                "reference": {n: t.clone() for n, t in self.reference.items()},
                "importance": None if self.importance is None
                else {n: t.clone() for n, t in self.importance.items()}}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != list(self.names):
            raise PriorlabError("ParameterAnchor.load_state_dict: the state anchors other "
                                "parameters than this anchor")
        if (state["importance"] is not None) != self.weighted:
            raise PriorlabError("ParameterAnchor.load_state_dict: the state is from an "
                                f"{'unweighted (L2)' if self.weighted else 'weighted (EWC)'} "
                                "anchor; build this one the same way")
        self.reference = {n: t.clone() for n, t in state["reference"].items()}
        self.importance = None if state["importance"] is None \
            else {n: t.clone() for n, t in state["importance"].items()}


def diagonal_fisher(model: nn.Module, inputs: torch.Tensor, *, pattern: str | None = None,
                    classes: Iterable[int] | None = None, batch_size: int = 1) -> dict[str, torch.Tensor]:
    """Diagonal Fisher information of the parameters matching ``pattern`` on ``inputs``.

    ``F_k = mean_x (d/d theta_k log p(y_hat | x))^2`` with ``y_hat`` the model's own prediction
    (argmax over ``classes`` when given, e.g. the classes seen so far in a class-incremental
    stream). ``batch_size=1`` gives this per-sample definition exactly; a larger batch squares
    the mean gradient of each mini-batch and multiplies by its size (faster, the estimate used
    by many CL code bases; an unbiased estimate only when per-sample gradients are uncorrelated).
    The model's train/eval mode is left as it was.
    """
    inputs = check_tensor(inputs, "inputs", who="diagonal_fisher", dtype="float", non_empty=True,
                          min_ndim=2)
    batch_size = check_number(batch_size, "batch_size", who="diagonal_fisher", low=1, integer=True)
    params = select_parameters(model, pattern)
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    allowed = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
    was_training = model.training
    model.eval()
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size]
        logits = model(x)
        if allowed is not None:
            logits = logits[:, allowed]
        log_probs = F.log_softmax(logits, dim=1)
        y_hat = log_probs.argmax(1)
        nll = -log_probs.gather(1, y_hat[:, None]).mean()
        grads = torch.autograd.grad(nll, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                fisher[name] += g.detach().pow(2) * len(x)
    model.train(was_training)
    return {name: f / len(inputs) for name, f in fisher.items()}


def _check_pair(who: str, student: torch.Tensor, teacher: torch.Tensor, kind: str) -> None:
    check_tensor(student, f"student_{kind}", who=who, min_ndim=2, dtype="float", non_empty=True,
                 finite=True)
    check_tensor(teacher, f"teacher_{kind}", who=who, min_ndim=2, dtype="float", non_empty=True,
                 finite=True)
    if student.shape != teacher.shape:
        raise PriorlabError(f"{who}: student_{kind} {tuple(student.shape)} and teacher_{kind} "
                            f"{tuple(teacher.shape)} must have the same shape")


def prediction_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                            temperature: float = 2.0) -> torch.Tensor:
    """LwF-style ``T^2 KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    Pass the logits of the previous tasks' classes only (the old head). The teacher is detached;
    the ``T^2`` factor keeps gradient sizes comparable across temperatures (Hinton et al. 2015).
    Zero when student and teacher agree.
    """
    _check_pair("prediction_distillation", student_logits, teacher_logits, "logits")
    temperature = check_number(temperature, "temperature", who="prediction_distillation", low=0,
                               low_open=True, hint="LwF uses 2")
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return temperature ** 2 * kl


def feature_distillation(student_features: torch.Tensor,
                         teacher_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the new and the previous model's features (the teacher
    is detached)."""
    _check_pair("feature_distillation", student_features, teacher_features, "features")
    loss = (student_features - teacher_features.detach()).pow(2).mean()
    if not torch.isfinite(loss):
        raise PriorlabError(f"feature_distillation: the squared difference of student_features and "
                            f"teacher_features overflows {loss.dtype} (features up to "
                            f"{student_features.abs().max().item():.3g}); rescale the features")
    return loss
