"""fit(): a small reference loop that runs adapters in the fixed order of :mod:`priorlab.hooks`.

Batches are ``(inputs, targets)`` or ``(inputs, targets, indices)``; wrap a dataset in
:class:`priorlab.data.IndexedDataset` when an adapter needs per-sample state (ELR, PS-KD).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext
from priorlab.progress import progress


def fit(model: nn.Module, batches: Callable[[], Iterable] | Iterable, optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, epochs: int = 1,
        adapters: Sequence[Adapter] = (), evaluate: Callable[[nn.Module], dict] | None = None,
        eval_every: int = 1, show_progress: bool = True) -> dict[str, list[float]]:
    """Train ``model`` and return its history.

    ``batches`` is an iterable re-iterated each epoch (a DataLoader) or a function returning one.
    The history holds the per-epoch mean of each named loss term (``loss/<name>``) and, every
    ``eval_every`` epochs, what ``evaluate(model)`` returns, with an ``epoch`` list beside it.
    """
    if epochs < 1:
        raise PriorlabError(f"epochs must be >= 1, got {epochs}")
    for adapter in adapters:
        model = adapter.setup(model, optimizer)
    history: dict[str, list[float]] = defaultdict(list)
    ctx = StepContext(model=model, optimizer=optimizer)
    for epoch in progress(range(epochs), desc="epochs", disable=None if show_progress else True):
        ctx.epoch = epoch
        model.train()
        sums: dict[str, float] = defaultdict(float)
        n_batches = 0
        for batch in (batches() if callable(batches) else batches):
            ctx.inputs, ctx.targets = batch[0], batch[1]
            ctx.indices = batch[2] if len(batch) > 2 else None
            ctx.outputs = model(ctx.inputs)
            terms = {"task": loss_fn(ctx.outputs, ctx.targets)}
            for adapter in adapters:
                for name, value in adapter.loss_terms(ctx).items():
                    if name in terms:
                        raise PriorlabError(f"two adapters return the loss term {name!r}; rename one")
                    terms[name] = value
            ctx.loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            ctx.loss.backward()
            for adapter in adapters:
                adapter.before_optimizer_step(ctx)
            optimizer.step()
            for adapter in adapters:
                adapter.after_step(ctx)
            for name, value in terms.items():
                sums[name] += float(value.detach())
            n_batches += 1
            ctx.step += 1
        if n_batches == 0:
            raise PriorlabError("the data yielded no batch; check the dataset and batch size")
        for adapter in adapters:
            adapter.on_epoch_end(ctx)
        for name, total in sums.items():
            history[f"loss/{name}"].append(total / n_batches)
        if evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
            model.eval()
            with torch.no_grad():
                for name, value in evaluate(model).items():
                    history[name].append(float(value))
            history["epoch"].append(epoch + 1)
            model.train()
    return dict(history)


class SchedulerStep(Adapter):
    """Steps a torch lr scheduler after every optimiser step (``every="step"``) or at the end of
    every epoch (``every="epoch"``), so schedules run inside :func:`fit` like any other hook."""

    def __init__(self, scheduler, every: str = "step"):
        if every not in ("step", "epoch"):
            raise PriorlabError(f"SchedulerStep every must be 'step' or 'epoch', got {every!r}")
        self.scheduler, self.every = scheduler, every

    def after_step(self, ctx: StepContext) -> None:
        if self.every == "step":
            self.scheduler.step()

    def on_epoch_end(self, ctx: StepContext) -> None:
        if self.every == "epoch":
            self.scheduler.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` whose arg-max prediction equals ``y`` (no gradients)."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator, *,
                     drop_last: bool = False) -> list[torch.Tensor]:
    """Index batches over a fresh permutation of ``range(n)`` (one epoch)."""
    order = torch.randperm(n, generator=generator)
    stop = n - batch_size + 1 if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
