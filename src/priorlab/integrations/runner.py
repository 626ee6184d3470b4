"""The trainer-independent half of every bridge: adapters, one StepContext, hooks in fit()'s order."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext


class AdapterRunner:
    """Runs ``adapters`` the way :func:`priorlab.train.fit` does, for a loop someone else owns.

    The owner calls :meth:`setup` once, then per optimiser step :meth:`loss_terms` (after the
    forward pass), :meth:`before_optimizer_step` (after backward), :meth:`after_step`, and
    :meth:`epoch_end` after each epoch. :meth:`take_means` returns the mean of every named term
    since the last call, for a logger.
    """

    def __init__(self, adapters: Sequence[Adapter], who: str):
        adapters = list(adapters)
        for adapter in adapters:
            if not isinstance(adapter, Adapter):
                raise PriorlabError(f"{who}: adapters must be priorlab.hooks.Adapter instances, got "
                                    f"{type(adapter).__name__}")
        self.adapters, self.who = adapters, who
        self.ctx: StepContext | None = None
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        unsafe = [type(a).__name__ for a in self.adapters if not a.ddp_safe]
        if unsafe and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise PriorlabError(f"{self.who}: adapter(s) {', '.join(unsafe)} are not safe under "
                                "distributed data parallel (their state would diverge across "
                                "processes); train them in a single process")
        for adapter in self.adapters:
            if adapter.setup(model, optimizer) is not model:
                raise PriorlabError(f"{self.who}: {type(adapter).__name__}.setup replaces the model, "
                                    "which this trainer cannot take over; use priorlab.train.fit")
        step, epoch = (self.ctx.step, self.ctx.epoch) if self.ctx is not None else (0, 0)
        self.ctx = StepContext(model=model, optimizer=optimizer, step=step, epoch=epoch)

    def _context(self) -> StepContext:
        if self.ctx is None:
            raise PriorlabError(f"{self.who}: the adapters were not set up; pass the callback to "
                                "the trainer (callbacks=[...]) so that it runs at the start of fit")
        return self.ctx

    def loss_terms(self, inputs, outputs: torch.Tensor, targets, indices=None) -> dict[str, torch.Tensor]:
        """Every adapter's named loss terms for this batch (checked: one-element and finite)."""
        ctx = self._context()
        ctx.inputs, ctx.outputs, ctx.targets, ctx.indices = inputs, outputs, targets, indices
        terms: dict[str, torch.Tensor] = {}
        for adapter in self.adapters:
            for name, value in adapter.loss_terms(ctx).items():
                if name in terms or name == "task":
                    raise PriorlabError(f"{self.who}: two adapters return the loss term {name!r} (or "
                                        "one calls it 'task'); rename one")
                terms[name] = value
        return terms

    def record(self, terms: dict[str, torch.Tensor]) -> None:
        """Add this step's terms to the running means; a non-finite term stops training."""
        ctx = self._context()
        for name, term in terms.items():
            if not isinstance(term, torch.Tensor) or term.numel() != 1:
                raise PriorlabError(f"{self.who}: loss term {name!r} must be a one-element tensor")
            value = float(term.detach())
            if not math.isfinite(value):
                raise PriorlabError(f"{self.who}: loss term {name!r} is {value} at epoch "
                                    f"{ctx.epoch + 1}, step {ctx.step + 1}: training diverged")
            self._sums[name] += value
            self._counts[name] += 1

    def take_means(self) -> dict[str, float]:
        """``{"loss/<name>": mean since the last call}``, then starts new sums."""
        means = {f"loss/{name}": total / self._counts[name] for name, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means

    def before_optimizer_step(self) -> None:
        for adapter in self.adapters:
            adapter.before_optimizer_step(self._context())

    def after_step(self) -> None:
        ctx = self._context()
        for adapter in self.adapters:
            adapter.after_step(ctx)
        ctx.step += 1

    def epoch_end(self) -> None:
        ctx = self._context()
        for adapter in self.adapters:
            adapter.on_epoch_end(ctx)
        ctx.epoch += 1

    def state_dict(self) -> dict:
        ctx = self.ctx
        return {"adapters": [a.state_dict() for a in self.adapters],
                "step": ctx.step if ctx else 0, "epoch": ctx.epoch if ctx else 0}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or len(state.get("adapters", ())) != len(self.adapters):
            raise PriorlabError(f"{self.who}: the saved state holds a different number of adapters "
                                f"than the {len(self.adapters)} given")
        for adapter, saved in zip(self.adapters, state["adapters"]):
            adapter.load_state_dict(saved)
        self.ctx = StepContext(model=None, optimizer=None, step=int(state["step"]),
                               epoch=int(state["epoch"]))
