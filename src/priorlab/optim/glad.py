"""GLAD: LoRA tuning whose gradient is regularised towards the sharpness-aware (SAM) gradient.

Peng, Wang, Liu & Chen, "GLAD: Generalizable Tuning for Vision-Language Models", arXiv:2507.13089
(2025). No official code was published when this was written ("The code will be publicly
available"; none found). GLAD adapts CLIP with LoRA and, to keep few-shot LoRA from overfitting,
steers the task gradient ``g = grad L(w)`` towards a reference: the SAM gradient (Foret et al.,
ICLR 2021, arXiv:2010.01412) taken at the worst-case neighbour of the LoRA weights::

    eps   = rho * g / ||g||                  (one global norm over all trainable tensors)
    g_sam = grad L(w + eps)
    d     = g + lambda * (g_sam - g)         (the regularised gradient the optimiser steps with)

``d`` is the gradient of ``L(w) + lambda * (L(w + eps) - L(w))`` with ``eps`` held fixed (SAM's
own first-order treatment): the task loss plus ``lambda`` times the sharpness gap, so
``lambda = 0`` is plain LoRA and ``lambda = 1`` is SAM. The paper's exact regulariser equation
was not retrieved here; this combination is our reading of its Fig. 1 ("the SAM gradient as a
reference signal to steer the original gradient direction"), recorded as a deviation on the card.

:func:`regularise_gradients` does it in any loop (``.grad`` holds ``g`` after ``backward``); the
:class:`GLAD` adapter does it inside :func:`priorlab.train.fit`; :func:`apply_lora` puts PEFT LoRA
on a ``transformers`` CLIPModel or the :mod:`priorlab.vl` stand-in's ViT.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.hooks import Adapter, StepContext, unwrap_model
from priorlab.validation import check_number

# attention projections LoRA adapts (q, k, v, as CLIP-LoRA and GLAD do) per model family
LORA_PRESETS = {"clip": ("q_proj", "k_proj", "v_proj"), "standin_vit": ("query", "key", "value")}
DEFAULT_RHO = 0.05  # SAM's default radius
DEFAULT_STRENGTH = 0.5


def apply_lora(model: nn.Module, targets: str | Sequence[str] = "clip", *, rank: int = 2,
               alpha: float = 1.0, dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA (``W + (alpha / rank) B A``, ``B`` = 0 at the start, so the
    wrapped model equals the original) on the modules named by ``targets``: a preset of
    :data:`LORA_PRESETS` or module-name suffixes. Only the LoRA matrices train. As PEFT does, the
    layers of ``model`` itself are replaced: pass a ``copy.deepcopy`` to keep the original."""
    who = "apply_lora"
    rank = check_number(rank, "rank", who=who, low=1, integer=True)
    alpha = check_number(alpha, "alpha", who=who, low=0.0, low_open=True)
    dropout = check_number(dropout, "dropout", who=who, low=0.0, high=1.0, high_open=True)
    if isinstance(targets, str):
        if targets not in LORA_PRESETS:
            raise did_you_mean(targets, LORA_PRESETS, "LoRA preset")
        targets = LORA_PRESETS[targets]
    targets = list(targets)
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if not targets or missing:
        raise PriorlabError(f"{who}: no Linear module named {missing or targets} in "
                            f"{type(model).__name__}; Linear modules: {names[:8]}")
    import peft  # imported here: only LoRA users pay for it

    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                             bias="none")
    return peft.get_peft_model(model, config)


def _check_strengths(rho: float, strength: float, who: str) -> tuple[float, float]:
    rho = check_number(rho, "rho", who=who, low=0.0)
    strength = check_number(strength, "strength", who=who, low=0.0, high=1.0,
                            hint="0 = plain task gradient, 1 = the SAM gradient")
    return rho, strength


def regularise_gradients(params: Iterable[torch.Tensor], loss_closure: Callable[[], torch.Tensor], *,
                         rho: float = DEFAULT_RHO, strength: float = DEFAULT_STRENGTH) -> float:
    """Replace each parameter's ``.grad`` (the task gradient ``g``) by GLAD's regularised
    gradient ``g + strength * (g_sam - g)``; returns ``cos(g, g_sam)`` (1.0 when nothing is done).

    ``loss_closure()`` recomputes the task loss on the same batch (no backward); it is evaluated
    once at ``w + rho * g / ||g||`` and the parameters are restored exactly afterwards. Parameters
    without a gradient are left alone; ``strength = 0``, ``rho = 0`` or a zero gradient leave
    ``.grad`` untouched.
    """
    who = "regularise_gradients"
    rho, strength = _check_strengths(rho, strength, who)
    if not callable(loss_closure):
        raise PriorlabError(f"{who}: loss_closure must be callable, got {type(loss_closure).__name__}")
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise PriorlabError(f"{who} needs an iterable of tensors (e.g. model.parameters())")
    params = [p for p in params if p.grad is not None]
    if not params:
        raise PriorlabError(f"{who}: no parameter has a gradient; call loss.backward() first")
    grads = [p.grad.detach().clone() for p in params]
    if not all(torch.isfinite(g).all() for g in grads):
        raise PriorlabError(f"{who}: the task gradient holds NaN or infinity")
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    if strength == 0 or rho == 0 or norm == 0:
        return 1.0
    originals = [p.detach().clone() for p in params]  # restored by copy: w + e - e != w in floats
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.add_(g, alpha=rho / float(norm))
    try:
        with torch.enable_grad():
            loss = loss_closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise PriorlabError(f"{who}: loss_closure must return a scalar tensor")
            sam = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, w in zip(params, originals):
                p.copy_(w)
    sam = [torch.zeros_like(g) if s is None else s.detach() for g, s in zip(grads, sam)]
    dot = sum((g * s).sum() for g, s in zip(grads, sam))
    sam_norm = torch.sqrt(sum(s.pow(2).sum() for s in sam))
    with torch.no_grad():
        for p, g, s in zip(params, grads, sam):
            p.grad.copy_(g + strength * (s - g))
    return float(dot / (norm * sam_norm)) if sam_norm > 0 else 0.0


class GLAD(Adapter):
    """GLAD's gradient regularisation as a :mod:`priorlab.hooks` adapter for
    :func:`priorlab.train.fit` (or any loop calling the hooks).

    After the task backward, :meth:`before_optimizer_step` re-evaluates ``loss_fn(model(inputs),
    targets)`` at the SAM-perturbed weights and replaces the gradients of ``params`` (default:
    every trainable parameter, i.e. the LoRA matrices after :func:`apply_lora`) by
    ``g + strength * (g_sam - g)``. Other loss terms an adapter adds stay in ``g`` but are not
    re-evaluated at the perturbed point. ``ctx.extra["glad_cosine"]`` holds ``cos(g, g_sam)``.
    Stateless: ``state_dict`` is empty.
    """

    # the SAM gradient is taken with torch.autograd on each rank's own batch, outside DDP's
    # gradient all-reduce, so ranks would step on different directions
    ddp_safe = False

    def __init__(self, loss_fn: Callable, *, rho: float = DEFAULT_RHO, strength: float = DEFAULT_STRENGTH,
                 params: Iterable[torch.Tensor] | None = None):
        if not callable(loss_fn):
            raise PriorlabError(f"GLAD: loss_fn must be callable as loss_fn(outputs, targets), got "
                                f"{type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        self.rho, self.strength = _check_strengths(rho, strength, "GLAD")
        self.params = None if params is None else list(params)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        model = unwrap_model(ctx.model)
        params = self.params if self.params is not None else [p for p in model.parameters()
                                                              if p.requires_grad]
        ctx.extra["glad_cosine"] = regularise_gradients(
            params, lambda: self.loss_fn(model(ctx.inputs), ctx.targets), rho=self.rho,
            strength=self.strength)
