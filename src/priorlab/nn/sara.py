"""SaRA: fine-tune only a pretrained model's smallest ("ineffective") weights, sparsely.

Hu et al., "SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank
Adaptation", arXiv:2409.06633 (official code: github.com/sjtuplayer/SaRA, ``optim/adamw.py``).
The smallest weights by magnitude barely contribute to a pretrained model's output, so SaRA
re-uses them: for every adapted weight matrix ``W`` it trains only the entries of

    M = {(i, j) : |W_ij| < theta}                         (one threshold theta for all layers)

and adds, at each optimiser step, a nuclear-norm penalty on one randomly chosen adapted matrix
(the paper's low-rank constraint against overfitting):

    L_rank = lambda_rank * || P_M(W) ||_*                 (P_M keeps the entries in M, zeroes the rest)

Progressive parameter adjustment: after ``progressive_step`` steps the trained values are
written into the weights and the mask is chosen again with the same threshold, so entries that
have grown past theta (now "effective") are frozen and the optimiser restarts on the rest.
Unstructured backpropagation (the memory saving): the trainable parameter of a matrix is the
vector ``W[M]`` of its selected entries only, scattered into the frozen weight in the forward
pass, so the persistent gradient and optimiser state hold ``|M|`` numbers, not ``W.numel()``.

Use :func:`apply_sara` on a model (registers a :class:`SparseUpdate` parametrisation on each
adapted weight and freezes every other parameter), train ``sara_parameters(model)`` with any
optimiser (the paper: AdamW), and pass a :class:`SaRARegulariser` to :func:`priorlab.train.fit`
(or call its hooks in your own loop) for the nuclear-norm term and the progressive re-selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext

DEFAULT_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_threshold(threshold) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise PriorlabError(f"threshold must be a positive number, got {threshold!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise PriorlabError(f"threshold must be positive and finite (got {value}); e.g. "
                            "threshold=2e-3 (the official default for Stable Diffusion), or use "
                            "threshold_for_budget() to match a parameter count")
    return value


class SparseUpdate(nn.Module):
    """Parametrisation ``W -> W with W[mask] replaced by values`` (the trainable entries).

    ``values`` holds the selected entries in row-major order (``W[mask]``), so at registration
    the effective weight equals the pretrained one. The gradient reaching ``values`` is the
    dense gradient restricted to the mask; nothing of size ``W`` is kept between steps.
    """

    def __init__(self, weight: torch.Tensor, threshold: float):
        super().__init__()
        threshold = _check_threshold(threshold)
        if not torch.is_floating_point(weight):
            raise PriorlabError(f"SparseUpdate needs a floating-point weight, got {weight.dtype}")
        mask = weight.detach().abs() < threshold
        self.register_buffer("mask", mask)
        self.values = nn.Parameter(weight.detach()[mask].clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.masked_scatter(self.mask, self.values.to(weight.dtype))

    @torch.no_grad()
    def reselect(self, original: torch.Tensor, threshold: float) -> nn.Parameter:
        """Write the trained values into ``original``, choose the mask again and return the
        new ``values`` parameter (a new object: optimisers holding the old one must swap it)."""
        original.masked_scatter_(self.mask, self.values.to(original.dtype))
        # entries outside the old mask never changed and were >= threshold, so the new mask is
        # the old one minus the entries that training pushed past the threshold
        self.mask = original.abs() < threshold
        self.values = nn.Parameter(original[self.mask].clone().to(self.values.dtype))
        return self.values

    def extra_repr(self) -> str:
        return f"trainable={int(self.mask.sum())} of {self.mask.numel()}"


def _targets(model: nn.Module, module_types: tuple, target_modules) -> list[tuple[str, nn.Module]]:
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                   for t in module_types):
        raise PriorlabError(f"module_types must be nn.Module classes, got {module_types!r}")
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, module_types) or getattr(module, "weight", None) is None:
            continue
        if target_modules is not None and name not in target_modules:
            continue
        chosen.append((name, module))
    if target_modules is not None:
        missing = set(target_modules) - {name for name, _ in chosen}
        if missing:
            raise PriorlabError(f"target_modules {sorted(missing)} are not {module_types} "
                                f"modules of the model")
    if not chosen:
        raise PriorlabError("apply_sara found no module to adapt (no Linear/Conv weight, or "
                            "target_modules matched nothing)")
    return chosen


def threshold_for_budget(model: nn.Module, n_trainable: int, *,
                         module_types: Iterable[type] = DEFAULT_MODULES,
                         target_modules: Iterable[str] | None = None) -> float:
    """The threshold theta at which about ``n_trainable`` entries of the target weights satisfy
    ``|w| < theta`` (one theta over all of them, as in the paper); for equal-budget comparisons."""
    target_modules = None if target_modules is None else set(target_modules)
    weights = torch.cat([m.weight.detach().abs().flatten()
                         for _, m in _targets(model, tuple(module_types), target_modules)])
    if isinstance(n_trainable, bool) or not isinstance(n_trainable, int) \
            or not 0 < n_trainable < weights.numel():
        raise PriorlabError(f"n_trainable must be an int in (0, {weights.numel()}), got "
                            f"{n_trainable!r}")
    ordered = weights.sort().values
    return float((ordered[n_trainable - 1] + ordered[n_trainable]) / 2)


def apply_sara(model: nn.Module, threshold: float, *,
               module_types: Iterable[type] = DEFAULT_MODULES,
               target_modules: Iterable[str] | None = None) -> list[str]:
    """Make ``model`` SaRA-trainable in place; return the names of the adapted modules.

    Every ``weight`` of ``module_types`` (or of the modules named in ``target_modules``) gets a
    :class:`SparseUpdate` with the entries ``|w| < threshold``; every other parameter of the
    model (biases, norms, unadapted layers, the frozen weights themselves) stops requiring
    gradients, so ``sara_parameters(model)`` is all there is to train.
    """
    threshold = _check_threshold(threshold)
    target_modules = None if target_modules is None else set(target_modules)
    chosen = _targets(model, tuple(module_types), target_modules)
    if any(parametrize.is_parametrized(m, "weight") for _, m in chosen):
        raise PriorlabError("apply_sara: a target weight is already parametrised (SaRA applied "
                            "twice?); call remove_sara(model) first")
    for param in model.parameters():
        param.requires_grad_(False)
    for _, module in chosen:
        parametrize.register_parametrization(module, "weight", SparseUpdate(module.weight, threshold))
    model._sara_threshold = threshold  # the progressive re-selection uses the same threshold
    return [name for name, _ in chosen]


def sara_modules(model: nn.Module) -> Iterator[tuple[nn.Module, SparseUpdate]]:
    """(module, its SparseUpdate) for every SaRA-adapted weight of ``model``."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, SparseUpdate):
                    yield module, p


def sara_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable sparse values of every adapted weight (what the optimiser gets)."""
    params = [update.values for _, update in sara_modules(model)]
    if not params:
        raise PriorlabError("the model has no SaRA parameters; call apply_sara(model, ...) first")
    return params


def remove_sara(model: nn.Module) -> None:
    """Bake the trained entries into plain weights and drop the parametrisations."""
    for module, _ in list(sara_modules(model)):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def sara_state_bytes(model: nn.Module, optimizer_slots: int = 2) -> dict[str, int]:
    """Bytes that persist across steps for training the sparse entries vs the dense weights.

    ``optimizer_slots`` is the number of per-parameter optimiser buffers (2 for Adam/AdamW).
    ``sparse`` counts gradient + optimiser state of the selected entries plus the boolean
    masks; ``dense_masked`` the same for a masked dense update (gradient and state the size of
    every adapted matrix), the memory that unstructured backpropagation avoids.
    """
    sparse = dense = 0
    for _, update in sara_modules(model):
        item = update.values.element_size()
        sparse += (1 + optimizer_slots) * update.values.numel() * item + update.mask.numel()
        dense += (1 + optimizer_slots) * update.mask.numel() * item
    return {"sparse": sparse, "dense_masked": dense}


class SaRARegulariser(Adapter):
    """The nuclear-norm term and the progressive re-selection, as a :class:`priorlab.hooks.Adapter`.

    Each step one adapted 2-D weight with ``min(shape) > min_dim`` is drawn at random (as the
    official optimiser does) and ``lambda_rank * ||P_M(W)||_*`` is added to the loss.
    After ``progressive_step`` optimiser steps the masks are chosen again (see
    :meth:`SparseUpdate.reselect`) and the optimiser's state for the values is reset.
    ``progressive_step=None`` disables the re-selection; ``lambda_rank=0`` the penalty.
    """

    # re-selection replaces the trainable parameters mid-run, which DistributedDataParallel (which
    # registers its parameters once, at wrapping) would not synchronise
    ddp_safe = False

    def __init__(self, lambda_rank: float = 5e-4, progressive_step: int | None = None, *,
                 min_dim: int = 64, seed: int = 0):
        try:
            lambda_rank = float(lambda_rank)
        except (TypeError, ValueError):
            raise PriorlabError(f"lambda_rank must be a number >= 0, got {lambda_rank!r}") from None
        if not math.isfinite(lambda_rank) or lambda_rank < 0:
            raise PriorlabError(f"lambda_rank must be finite and >= 0, got {lambda_rank}")
        if progressive_step is not None and (isinstance(progressive_step, bool) or not
                                             isinstance(progressive_step, int) or progressive_step < 1):
            raise PriorlabError(f"progressive_step must be a positive int or None, got "
                                f"{progressive_step!r}")
        if isinstance(min_dim, bool) or not isinstance(min_dim, int) or min_dim < 0:
            raise PriorlabError(f"min_dim must be an int >= 0, got {min_dim!r}")
        self.lambda_rank, self.progressive_step, self.min_dim = lambda_rank, progressive_step, min_dim
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        self.threshold = getattr(model, "_sara_threshold", None)
        if self.threshold is None:
            raise PriorlabError("SaRARegulariser: the model has no SaRA weights; call "
                                "apply_sara(model, threshold) before training")
        self.model, self.optimizer = model, optimizer
        self.low_rank = [u for m, u in sara_modules(model)
                         if u.mask.dim() == 2 and min(u.mask.shape) > self.min_dim]
        if self.lambda_rank > 0 and not self.low_rank:
            raise PriorlabError(f"SaRARegulariser: no adapted 2-D weight has min(shape) > "
                                f"min_dim={self.min_dim}; lower min_dim or set lambda_rank=0")
        return model

    def rank_penalty(self) -> torch.Tensor:
        """``lambda_rank * ||P_M(W)||_*`` for one randomly drawn eligible weight."""
        pick = int(torch.randint(len(self.low_rank), (1,), generator=self.generator))
        update = self.low_rank[pick]
        sparse = torch.zeros(update.mask.shape, dtype=update.values.dtype,
                             device=update.values.device).masked_scatter(update.mask, update.values)
        return self.lambda_rank * torch.linalg.svdvals(sparse).sum()

    def loss_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        if self.lambda_rank == 0:
            return {}
        return {"rank": self.rank_penalty()}

    def after_step(self, ctx: StepContext) -> None:
        self.steps += 1
        if self.steps == self.progressive_step:
            self.reselect()

    @torch.no_grad()
    def reselect(self) -> None:
        """Re-select every mask now; the optimiser (if given to setup) gets the new values
        with fresh state, as the official optimiser re-initialises itself."""
        for module, update in list(sara_modules(self.model)):
            old = update.values
            new = update.reselect(module.parametrizations.weight.original, self.threshold)
            if self.optimizer is None:
                continue
            self.optimizer.state.pop(old, None)
            for group in self.optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
