"""Regularised mask tuning (R-AMT): learnable binary masks on frozen weights, with gradient dropout.

Zheng, Wu, Feng, Zhu, Liu, Zhao, Zha, Chen, Shen, "Regularized Mask Tuning: Uncovering Hidden
Knowledge in Pre-trained Vision-Language Models", ICCV 2023, arXiv:2307.15049; official code
wuw2019/R-AMT (``code/modules/masklayers.py``, ``code/trainers/masktuning.py``).

Mask tuning (Sec. 3.2): each selected pre-trained weight ``W`` is frozen and gets a real-valued
score tensor ``M`` of its shape; the forward pass uses ``W * 1[M > tau]`` and the backward pass
treats the thresholding as the identity (straight-through estimator), so the scores train while
the weights never change. Officially the scores start at 1e-2 everywhere and tau = 5e-3, so
training starts from the unmasked model; the scores carry an L2-norm penalty (weight 1e-4).
Which weights: for CLIP ViT-B/16 (config ``MASK_MLP: False``) the image encoder's patch
embedding and every block's attention input (QKV) and output projections; biases, norms,
embeddings, MLPs and the text encoder stay unmasked (:data:`MASK_TARGETS`).

Gradient dropout regularity (Sec. 3.3, Eq. 6-7): with ``g`` the task (cross-entropy) gradient
and ``g_kl`` the gradient of the KL divergence to the zero-shot model's predictions, element ``i``
of ``g`` is kept with probability

    P_i = (sign(g_i) (g_i + g_kl_i) / (|g_i| + |g_kl_i|) + 1) / 2,

i.e. always when the two agree in sign and with probability ``|g_i| / (|g_i| + |g_kl_i|)`` when
they disagree; a dropped element is scaled by ``1 - strength`` (strength 1: set to zero). Only
the (thinned) task gradient updates the scores: the KL term is a reference direction, not a
second loss (official ``graddrop_backward_and_update``).

The parametrisation works on any ``nn.Linear`` / ``nn.Conv2d`` through
:func:`torch.nn.utils.parametrize`, so it applies to ``transformers``' CLIPModel as well as to
the stand-in of :mod:`priorlab.vl`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

# module-name patterns (fnmatch) of the weights the official ViT-B/16 configuration masks
MASK_TARGETS = {
    # transformers.CLIPModel: vision patch embedding + every vision block's q/k/v/out projections
    "clip_vision": ("vision_model.embeddings.patch_embedding",
                    "vision_model.encoder.layers.*.self_attn.q_proj",
                    "vision_model.encoder.layers.*.self_attn.k_proj",
                    "vision_model.encoder.layers.*.self_attn.v_proj",
                    "vision_model.encoder.layers.*.self_attn.out_proj"),
    # priorlab.vl.standin.PromptableViT (or a StandIn's image_encoder): the same choice
    "standin_vit": ("patch_embed", "blocks.*.attn.query", "blocks.*.attn.key", "blocks.*.attn.value",
                    "blocks.*.attn.out"),
}


class _StraightThroughBinarize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def binarize(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1[scores > threshold]`` as floats, with the identity as its gradient (straight-through)."""
    check_tensor(scores, "scores", who="binarize", dtype="float", finite=True)
    return _StraightThroughBinarize.apply(scores, float(threshold))


class BinaryMask(nn.Module):
    """Parametrisation ``W -> W * binarize(scores, threshold)`` with learnable ``scores`` of W's
    shape, all initialised at ``init`` (official ``MASK.INIT '1s'``, ``MASK.SCALE`` 1e-2)."""

    def __init__(self, shape: Sequence[int], *, init: float = 1e-2, threshold: float = 5e-3):
        super().__init__()
        self.threshold = check_number(threshold, "threshold", who="BinaryMask")
        init = check_number(init, "init", who="BinaryMask")
        self.scores = nn.Parameter(torch.full(tuple(shape), float(init)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * binarize(self.scores, self.threshold)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.scores.shape)}, threshold={self.threshold:g}"


def apply_masks(model: nn.Module, targets: str | Sequence[str] = "clip_vision", *, init: float = 1e-2,
                threshold: float = 5e-3) -> list[str]:
    """Freeze every parameter of ``model`` and give the weights of the modules named by
    ``targets`` a :class:`BinaryMask`; returns the masked module names.

    ``targets``: a key of :data:`MASK_TARGETS` or module-name patterns (``fnmatch``, matched
    against ``model.named_modules()``; each must match at least one ``nn.Linear``/``nn.Conv*d``).
    ``init`` must exceed ``threshold`` (> 0), so the masked model starts equal to the frozen one.
    Afterwards only the scores (:func:`mask_scores`) require gradients.
    """
    who = "apply_masks"
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"{who}: model must be an nn.Module, got {type(model).__name__}")
    threshold = check_number(threshold, "threshold", who=who, low=0.0)
    init = check_number(init, "init", who=who, low=0.0)
    if init <= threshold:
        raise PriorlabError(f"{who}: init ({init:g}) must exceed threshold ({threshold:g}), or every "
                            "weight starts masked out")
    if isinstance(targets, str):
        if targets not in MASK_TARGETS:
            raise did_you_mean(targets, MASK_TARGETS, "mask target preset")
        patterns = MASK_TARGETS[targets]
    else:
        patterns = tuple(targets)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise PriorlabError(f"{who}: targets must be a preset name or non-empty patterns, "
                                f"got {targets!r}")
    maskable = {name: module for name, module in model.named_modules()
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}
    chosen = []
    for pattern in patterns:
        hits = [name for name in maskable if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise PriorlabError(f"{who}: no Linear/Conv module matches {pattern!r}; maskable modules "
                                f"are e.g. {sorted(maskable)[:8]}")
        chosen += [name for name in hits if name not in chosen]
    for name in chosen:
        if parametrize.is_parametrized(maskable[name], "weight"):
            raise PriorlabError(f"{who}: {name}.weight is already parametrised (masks applied twice?)")
    earlier_scores = {id(m.scores) for m in model.modules() if isinstance(m, BinaryMask)}
    for param in model.parameters():  # freeze all but the scores of an earlier call
        if id(param) not in earlier_scores:
            param.requires_grad_(False)
    for name in chosen:
        module = maskable[name]
        parametrize.register_parametrization(
            module, "weight", BinaryMask(module.weight.shape, init=init, threshold=threshold))
        module.parametrizations.weight.original.requires_grad_(False)
    return chosen


def _masks(model: nn.Module) -> list[BinaryMask]:
    masks = [m for m in model.modules() if isinstance(m, BinaryMask)]
    if not masks:
        raise PriorlabError("model has no binary masks: call priorlab.nn.mask_tuning.apply_masks first")
    return masks


def mask_scores(model: nn.Module) -> list[nn.Parameter]:
    """The trainable mask scores of ``model`` (what the optimiser gets)."""
    return [mask.scores for mask in _masks(model)]


@torch.no_grad()
def mask_sparsity(model: nn.Module) -> float:
    """Share of masked weights switched off (scores at or below the threshold)."""
    masks = _masks(model)
    off = sum(int((m.scores <= m.threshold).sum()) for m in masks)
    return off / sum(m.scores.numel() for m in masks)


def mask_penalty(model: nn.Module) -> torch.Tensor:
    """Sum over masked tensors of the L2 norm of their scores (official ``RegLoss(param, 2)``;
    the official weight is 1e-4)."""
    return sum(m.scores.norm(2) for m in _masks(model))


def distillation_kl(logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * mean_batch KL(softmax(teacher / T) || softmax(logits / T))``: the divergence from
    the zero-shot model's predictions (official ``KLLoss`` with ``GDR_T`` = 1; the official
    value omits the teacher's entropy, a constant, so the gradient is the same)."""
    who = "distillation_kl"
    check_tensor(logits, "logits", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    check_tensor(teacher_logits, "teacher_logits", who=who, shape=tuple(logits.shape), dtype="float",
                 finite=True)
    t = check_number(temperature, "temperature", who=who, low=0.0, low_open=True)
    teacher = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    student = F.log_softmax(logits / t, dim=-1)
    return t * t * (teacher.exp() * (teacher - student)).sum(-1).mean()


def gradient_dropout(task_grad: torch.Tensor, reference_grad: torch.Tensor, strength: float = 1.0, *,
                     generator: torch.Generator | None = None, eps: float = 1e-8) -> torch.Tensor:
    """R-AMT's gradient dropout (Eq. 6-7): elements of ``task_grad`` that disagree in sign with
    ``reference_grad`` survive with probability ``|g| / (|g| + |g_ref|)``, agreeing ones always;
    a dropped element is multiplied by ``1 - strength`` (1 drops it to zero, 0 keeps everything).
    """
    who = "gradient_dropout"
    check_tensor(task_grad, "task_grad", who=who, dtype="float", finite=True)
    check_tensor(reference_grad, "reference_grad", who=who, shape=tuple(task_grad.shape), dtype="float",
                 finite=True)
    strength = check_number(strength, "strength", who=who, low=0.0, high=1.0)
    keep_prob = (torch.sign(task_grad) * (task_grad + reference_grad)
                 / (task_grad.abs() + reference_grad.abs() + eps) + 1) / 2
    draw = torch.rand(task_grad.shape, generator=generator, dtype=task_grad.dtype, device=task_grad.device)
    return ((1.0 - strength) + strength * (keep_prob > draw).to(task_grad.dtype)) * task_grad


def gradient_dropout_backward(task_loss: torch.Tensor, reference_loss: torch.Tensor,
                              params: Sequence[torch.Tensor], strength: float = 1.0, *,
                              generator: torch.Generator | None = None) -> None:
    """Set ``p.grad`` of each of ``params`` to :func:`gradient_dropout` of the task loss's gradient
    against the reference (KL-to-zero-shot) loss's; call ``optimizer.step()`` afterwards.
    Parameters the reference loss does not reach get the plain task gradient."""
    who = "gradient_dropout_backward"
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise PriorlabError(f"{who}: params must be a non-empty list of tensors that require grad")
    for name, loss in (("task_loss", task_loss), ("reference_loss", reference_loss)):
        check_tensor(loss, name, who=who, shape=(), dtype="float", finite=True)
    reference = torch.autograd.grad(reference_loss, params, retain_graph=True, allow_unused=True)
    task = torch.autograd.grad(task_loss, params, allow_unused=True)
    for p, g, g_ref in zip(params, task, reference):
        if g is None:
            p.grad = None
            continue
        p.grad = g if g_ref is None else gradient_dropout(g, g_ref, strength, generator=generator)
