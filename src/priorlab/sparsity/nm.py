"""N:M structured sparsity: masks, SR-STE, and the decay recipes MDGF and SDGF.

Bambhaniya et al., "Progressive Gradient Flow for Robust N:M Sparsity Training in
Transformers", arXiv:2402.04744 (2024); official code
github.com/abhibambhaniya/progressive_gradient_flow_nm_sparsity
(``timm/sparse_pruning/sparse_functions.py``). SR-STE: Zhou et al., "Learning N:M Fine-grained
Structured Sparse Neural Networks From Scratch", ICLR 2021, arXiv:2102.04010.

N:M sparsity keeps at most N non-zero weights in every group of M consecutive weights along a
layer's input dimension (a row of an ``nn.Linear`` weight of shape (out, in), as the official
"row-wise" mask groups them). The mask keeps the N largest magnitudes and is recomputed from the
dense weights ``W`` at every forward pass, so pruned weights can come back. With ``M`` the
binary mask and ``W~`` the weight the layer uses:

- SR-STE:  ``W~ = W * M``; backward ``dW = dW~ + lambda_W (1 - M) * W`` (sparse-refined
  straight-through estimator: dense gradients, pruned weights decayed towards zero).
- MDGF (mask decay gradient flow): ``W~ = W * (M + (1 - M) beta(t))`` with
  ``beta(t) = max(0, 1 - r t)`` (linear) or ``exp(-r t)`` (exponential), ``t`` the steps since the
  sparse phase began; the gradient reaches ``W`` unchanged (straight-through), as officially.
- SDGF (structure decay gradient flow): binary masks whose pattern steps through
  ``(M-1):M, M/2:M, M/4:M, ..., N:M`` in equal intervals of the sparse phase (the official
  "sparsify" structure decay); straight-through gradient.

Use :func:`apply_nm_sparsity` on a model (it registers :class:`NMSparsity` on ``nn.Linear``
weights), advance the recipes' clock once per optimiser step with :func:`advance_nm_step` (or
the :class:`NMSparsityStep` adapter in :func:`priorlab.train.fit`), and bake the final N:M
weights in with :func:`remove_nm_sparsity`. In ``eval()`` mode a layer always uses the binary
mask of the pattern in force (what is deployed), never a decayed one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.hooks import Adapter, StepContext, unwrap_model
from priorlab.validation import check_number, check_tensor

DECAYS = ("linear", "exp")


def _check_nm(n, m, who: str) -> tuple[int, int]:
    m = check_number(m, "m", who=who, low=1, integer=True, hint="e.g. n=2, m=4 for 2:4")
    n = check_number(n, "n", who=who, low=1, high=m, integer=True,
                     hint=f"N:M keeps n of every m weights, so 1 <= n <= m (m={m})")
    return n, m


def _check_weight(weight, m: int, who: str) -> torch.Tensor:
    check_tensor(weight, "weight", who=who, min_ndim=2, dtype="float", non_empty=True)
    if weight.shape[-1] % m:
        raise PriorlabError(f"{who}: the input dimension ({weight.shape[-1]}) of weight "
                            f"{tuple(weight.shape)} is not a multiple of m={m}; N:M groups m "
                            "consecutive input weights, so pick m dividing it or leave the layer dense")
    return weight


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M mask of ``weight``: 1 for the ``n`` largest ``|w|`` of every ``m`` consecutive
    weights along the last (input) dimension, 0 elsewhere; same shape and dtype, no gradient.
    Ties go to the lower index (``torch.topk``)."""
    n, m = _check_nm(n, m, "nm_mask")
    _check_weight(weight, m, "nm_mask")
    groups = weight.detach().abs().reshape(-1, m)
    if n == m:
        return torch.ones_like(weight, requires_grad=False)
    keep = groups.topk(n, dim=1, sorted=False).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0)
    return mask.reshape(weight.shape)


def is_nm_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input weights holds at most ``n`` non-zeros."""
    n, m = _check_nm(n, m, "is_nm_sparse")
    _check_weight(weight, m, "is_nm_sparse")
    return bool(((weight.detach().reshape(-1, m) != 0).sum(1) <= n).all())


class _SRSTEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, mask, lambda_w):
        ctx.save_for_backward(weight, mask)
        ctx.lambda_w = lambda_w
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        weight, mask = ctx.saved_tensors
        return grad + ctx.lambda_w * (1 - mask) * weight, None, None


class _DecayedMaskFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, mask, beta):
        return weight * (mask + (1 - mask) * beta)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None  # straight-through, as the official LinearDecay/ExponentialDecay


def srste(weight: torch.Tensor, mask: torch.Tensor, lambda_w: float = 2e-4) -> torch.Tensor:
    """``weight * mask`` whose backward is SR-STE's ``grad + lambda_w (1 - mask) * weight``
    (Zhou et al. 2021, eq. 5; lambda_w = 2e-4 as there and in the official code)."""
    lambda_w = check_number(lambda_w, "lambda_w", who="srste", low=0)
    check_tensor(weight, "weight", who="srste", dtype="float", finite=True)
    check_tensor(mask, "mask", who="srste", shape=tuple(weight.shape),
                 dtype=("float", "integer", "bool"), finite=True)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise PriorlabError("srste: mask must be binary (0/1 or bool), e.g. nm_mask(weight, n, m)")
    return _SRSTEFunction.apply(weight, mask.to(weight.dtype), lambda_w)


def decayed_mask_weight(weight: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """``weight * (mask + (1 - mask) beta)`` with a straight-through backward (MDGF's forward;
    ``beta = 0`` is the plain straight-through estimator with a binary mask)."""
    beta = check_number(beta, "beta", who="decayed_mask_weight", low=0, high=1)
    check_tensor(mask, "mask", who="decayed_mask_weight", shape=tuple(weight.shape))
    return _DecayedMaskFunction.apply(weight, mask.to(weight.dtype), beta)


def mask_decay_beta(step: int, decay: str = "exp", rate: float = 2e-4) -> float:
    """MDGF's mask value for pruned weights after ``step`` sparse steps: ``max(0, 1 - rate step)``
    (linear) or ``exp(-rate step)`` (exp); 1 before the sparse phase (``step < 0``)."""
    if decay not in DECAYS:
        raise did_you_mean(decay, DECAYS, "mask decay")
    rate = check_number(rate, "rate", who="mask_decay_beta", low=0)
    step = check_number(step, "step", who="mask_decay_beta", integer=True)
    if step < 0:
        return 1.0
    return max(0.0, 1.0 - rate * step) if decay == "linear" else math.exp(-rate * step)


def structure_decay_patterns(n: int, m: int) -> list[tuple[int, int]]:
    """SDGF's sequence of patterns towards ``n:m``: ``(m-1):m``, then ``m/2^i : m`` down to
    ``n:m`` (official "sparsify"; e.g. 1:16 -> 15:16, 8:16, 4:16, 2:16, 1:16)."""
    n, m = _check_nm(n, m, "structure_decay_patterns")
    frames = math.log2(m / n)
    if not frames.is_integer() or frames < 1:
        raise PriorlabError(f"structure_decay_patterns: m/n must be a power of two >= 2 for the "
                            f"halving schedule, got {n}:{m}; e.g. 1:16, 2:8, 1:4 or 2:4")
    return [(m - 1 if i == 0 else m // 2 ** i, m) for i in range(int(frames) + 1)]


@dataclass(frozen=True)
class SRSTE:
    """SR-STE (the baseline): binary mask, dense straight-through gradient plus the
    sparse-refined decay ``lambda_w (1 - M) W``. Dense for the first ``dense_steps``."""

    lambda_w: float = 2e-4
    dense_steps: int = 0

    def __post_init__(self):
        check_number(self.lambda_w, "lambda_w", who="SRSTE", low=0)
        check_number(self.dense_steps, "dense_steps", who="SRSTE", low=0, integer=True)

    def pattern(self, n: int, m: int, step: int) -> tuple[int, int] | None:
        return None if step < self.dense_steps else (n, m)

    def train_weight(self, weight, n: int, m: int, step: int) -> torch.Tensor:
        if step < self.dense_steps:
            return weight
        return _SRSTEFunction.apply(weight, nm_mask(weight, n, m), self.lambda_w)


@dataclass(frozen=True)
class MDGF:
    """Mask decay gradient flow: pruned weights enter the forward scaled by ``beta(t)``
    (:func:`mask_decay_beta`, ``t`` = steps after ``dense_steps``), straight-through gradient.
    Defaults: exponential decay (the paper's better variant) at the official default
    coefficient 2e-4 per step."""

    decay: str = "exp"
    rate: float = 2e-4
    dense_steps: int = 0

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise did_you_mean(self.decay, DECAYS, "mask decay")
        check_number(self.rate, "rate", who="MDGF", low=0, low_open=True,
                     hint="rate 0 never prunes; e.g. rate=2e-4 per step")
        check_number(self.dense_steps, "dense_steps", who="MDGF", low=0, integer=True)

    def pattern(self, n: int, m: int, step: int) -> tuple[int, int] | None:
        return None if step < self.dense_steps else (n, m)

    def beta(self, step: int) -> float:
        return mask_decay_beta(step - self.dense_steps, self.decay, self.rate)

    def train_weight(self, weight, n: int, m: int, step: int) -> torch.Tensor:
        if step < self.dense_steps:
            return weight
        return _DecayedMaskFunction.apply(weight, nm_mask(weight, n, m), self.beta(step))


@dataclass(frozen=True)
class SDGF:
    """Structure decay gradient flow: dense for ``dense_steps``, then the patterns of
    :func:`structure_decay_patterns` in equal intervals of the ``total_steps - dense_steps -
    fine_tune_steps`` sparse steps, then the target N:M; binary masks, straight-through."""

    total_steps: int
    dense_steps: int = 0
    fine_tune_steps: int = 0

    def __post_init__(self):
        total = check_number(self.total_steps, "total_steps", who="SDGF", low=1, integer=True,
                             hint="the number of optimiser steps the whole training takes")
        dense = check_number(self.dense_steps, "dense_steps", who="SDGF", low=0, integer=True)
        tune = check_number(self.fine_tune_steps, "fine_tune_steps", who="SDGF", low=0,
                            integer=True)
        if dense + tune >= total:
            raise PriorlabError(f"SDGF: dense_steps ({dense}) + fine_tune_steps ({tune}) leave no "
                                f"step of structure decay in total_steps={total}")

    def pattern(self, n: int, m: int, step: int) -> tuple[int, int] | None:
        if step < self.dense_steps:
            return None
        patterns = structure_decay_patterns(n, m)
        span = (self.total_steps - self.dense_steps - self.fine_tune_steps) / len(patterns)
        return patterns[min(int((step - self.dense_steps) / span), len(patterns) - 1)]

    def train_weight(self, weight, n: int, m: int, step: int) -> torch.Tensor:
        current = self.pattern(n, m, step)
        if current is None:
            return weight
        return _DecayedMaskFunction.apply(weight, nm_mask(weight, *current), 0.0)


RECIPES = {"srste": SRSTE, "mdgf": MDGF, "sdgf": SDGF}


class NMSparsity(nn.Module):
    """Parametrisation ``W -> W~`` of one weight under an N:M recipe (:class:`SRSTE`,
    :class:`MDGF` or :class:`SDGF`). The recipe's clock is the buffer ``step`` (saved in the
    model's state_dict). Training mode uses the recipe; eval mode the binary mask of the pattern
    in force (dense before the sparse phase)."""

    def __init__(self, n: int, m: int, recipe: SRSTE | MDGF | SDGF | None = None):
        super().__init__()
        self.n, self.m = _check_nm(n, m, "NMSparsity")
        recipe = SRSTE() if recipe is None else recipe
        if not isinstance(recipe, tuple(RECIPES.values())):
            raise PriorlabError(f"NMSparsity: recipe must be SRSTE(), MDGF() or SDGF(...), got "
                                f"{type(recipe).__name__}")
        if isinstance(recipe, SDGF):
            structure_decay_patterns(self.n, self.m)  # fails early if n:m cannot be halved to
        self.recipe = recipe
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def pattern(self) -> tuple[int, int] | None:
        """The N:M pattern in force now (None while dense)."""
        return self.recipe.pattern(self.n, self.m, int(self.step))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.shape[-1] % self.m:
            _check_weight(weight, self.m, "NMSparsity")
        if self.training:
            return self.recipe.train_weight(weight, self.n, self.m, int(self.step))
        current = self.pattern()
        return weight if current is None else weight * nm_mask(weight, *current)

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, {self.recipe}"


def nm_layers(model: nn.Module) -> dict[str, NMSparsity]:
    """Qualified module name -> its :class:`NMSparsity`, for every sparsified weight."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, NMSparsity):
                    found[name] = p
    return found


def apply_nm_sparsity(model: nn.Module, n: int, m: int, recipe: SRSTE | MDGF | SDGF | None = None,
                      *, include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[str]:
    """Register :class:`NMSparsity` (``n:m``, ``recipe``; SR-STE by default) on the weight of
    every ``nn.Linear`` in ``model``, in place, and return the names of the layers changed.

    ``include`` keeps only modules whose qualified name contains one of its strings (e.g.
    ``include=("mlp",)`` for the feed-forward layers, the official default location);
    ``exclude`` drops modules whose name starts with one of its entries (e.g. the head).
    A layer whose input width is not a multiple of ``m`` is an error, never skipped silently.
    """
    template = NMSparsity(n, m, recipe)  # validates n, m, recipe before the model is touched
    include = None if include is None else tuple(include)
    exclude = tuple(exclude)
    changed = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(name.startswith(e) for e in exclude):
            continue
        if include is not None and not any(s in name for s in include):
            continue
        if "" in nm_layers(module):
            raise PriorlabError(f"apply_nm_sparsity: module {name!r} is already N:M sparse; "
                                "apply it once")
        _check_weight(module.weight, template.m, f"apply_nm_sparsity (module {name!r})")
        parametrize.register_parametrization(module, "weight",
                                             NMSparsity(template.n, template.m, template.recipe))
        changed.append(name)
    if not changed:
        raise PriorlabError(f"apply_nm_sparsity: no nn.Linear matched (include={include}, "
                            f"exclude={list(exclude)}); check the module names with "
                            "model.named_modules()")
    return changed


def advance_nm_step(model: nn.Module, steps: int = 1) -> int:
    """Advance every N:M layer's clock by ``steps`` (call once per optimiser step) and return
    the new step."""
    steps = check_number(steps, "steps", who="advance_nm_step", low=1, integer=True)
    layers = nm_layers(unwrap_model(model))
    if not layers:
        raise PriorlabError("advance_nm_step: the model has no N:M layer; call apply_nm_sparsity first")
    for layer in layers.values():
        layer.step += steps
    return int(next(iter(layers.values())).step)


def remove_nm_sparsity(model: nn.Module) -> list[str]:
    """Bake every N:M layer's binary-masked weight (the pattern in force) into a plain weight
    and remove the parametrisation; returns the layer names. The result is exactly N:M."""
    layers = nm_layers(model)
    for name, layer in layers.items():
        module = model.get_submodule(name)
        dense = module.parametrizations.weight.original.detach()
        current = layer.pattern()
        final = dense if current is None else dense * nm_mask(dense, *current)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            module.weight.copy_(final)
    return list(layers)


class NMSparsityStep(Adapter):
    """Adapter for :func:`priorlab.train.fit`: advances the N:M recipes' clock after every
    optimiser step. The clock lives in the model (buffers), so the adapter holds no state."""

    def after_step(self, ctx: StepContext) -> None:
        advance_nm_step(ctx.model)
