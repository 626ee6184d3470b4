"""The training-loop adapter protocol.

An adapter is the thin, stateful half of a method: it turns a pure component into hooks that
any loop can call. :func:`priorlab.train.fit` calls them in this fixed order each step::

    outputs = model(inputs)
    terms   = {"task": loss_fn(outputs, targets)} | adapter.loss_terms(ctx) ...
    optimizer.zero_grad(); sum(terms).backward()
    adapter.before_optimizer_step(ctx)      # gradient surgery goes here
    optimizer.step()
    adapter.after_step(ctx)

and ``on_epoch_end(ctx)`` after each epoch. Loss terms come back as a named dict so every
penalty is logged (one that silently stays 0 shows up). ``state_dict`` / ``load_state_dict``
carry an adapter's own state (per-sample buffers, counters) through checkpoints.

One capability flag: ``ddp_safe = False`` marks an adapter whose state would diverge across
processes under distributed data parallel; :func:`~priorlab.train.fit` refuses to run it when
``torch.distributed`` is initialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from priorlab.errors import PriorlabError


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside a ``DistributedDataParallel`` wrapper (the model itself otherwise),
    for adapters that call the model's own methods: each rank acts on its identical copy."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class StepContext:
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    inputs: Any = None
    targets: torch.Tensor | None = None
    indices: torch.Tensor | None = None  # dataset positions of the batch's samples, if given
    outputs: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    step: int = 0
    epoch: int = 0
    extra: dict = field(default_factory=dict)


class Adapter:
    """Base class: every hook is a no-op, so an adapter implements only what it needs."""

    ddp_safe = True

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> nn.Module:
        return model

    def loss_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return {}

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def after_step(self, ctx: StepContext) -> None:
        pass

    def on_epoch_end(self, ctx: StepContext) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


INDICES_HINT = ("wrap the training set in priorlab.data.IndexedDataset(x, y) so batches are "
                "(inputs, targets, indices)")


def sample_indices(ctx: StepContext, num_samples: int, who: str) -> torch.Tensor:
    """The batch's dataset indices, checked, for adapters that keep per-sample state.

    ``who`` names the adapter in the error (e.g. ``"ELR"``); ``num_samples`` is the size of its
    per-sample buffer.
    """
    if ctx.indices is None:
        raise PriorlabError(f"{who} needs each sample's dataset index: {INDICES_HINT}")
    indices = torch.as_tensor(ctx.indices)
    batch = ctx.outputs.shape[0]
    if indices.ndim != 1 or indices.is_floating_point() or indices.shape[0] != batch:
        raise PriorlabError(f"{who} needs one integer index per sample ({batch}), got indices of "
                            f"shape {tuple(indices.shape)} and dtype {indices.dtype}; {INDICES_HINT}")
    outside = indices[(indices < 0) | (indices >= num_samples)]
    if outside.numel():
        raise PriorlabError(f"{who} got sample index {int(outside[0])} outside [0, {num_samples}); "
                            f"build {who} with num_samples=len(train_set)")
    return indices.long()
