"""fit(): a small reference loop that runs adapters in the fixed order of :mod:`priorlab.hooks`.

Batches are ``(inputs, targets)`` or ``(inputs, targets, indices)``; wrap a dataset in
:class:`priorlab.data.IndexedDataset` when an adapter needs per-sample state (ELR, PS-KD).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext
from priorlab.progress import progress
from priorlab.validation import check_number


def fit(model: nn.Module, batches: Callable[[], Iterable] | Iterable, optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *, epochs: int = 1,
        adapters: Sequence[Adapter] = (), evaluate: Callable[[nn.Module], dict] | None = None,
        eval_every: int = 1, show_progress: bool = True, logger=None,
        log_steps: bool = False) -> dict[str, list[float]]:
    """Train ``model`` and return its history.

    ``batches`` is an iterable re-iterated each epoch (a list, a DataLoader) or a function
    returning one. The history holds the per-epoch mean of each named loss term
    (``loss/<name>``) and, every ``eval_every`` epochs, what ``evaluate(model)`` returns, with an
    ``epoch`` list beside it. A NaN or infinite loss term stops training with a PriorlabError
    naming the epoch and step.

    ``logger`` receives the same numbers as the history while training runs: a TensorBoard
    ``SummaryWriter`` (anything with ``add_scalar``) or a callable ``(name, value, step)``. Each
    epoch sends ``loss/<name>`` and every evaluation metric with ``step`` = epochs done; with
    ``log_steps=True`` each optimiser step also sends ``step/loss/<name>`` with ``step`` = steps
    done (a separate name, since the two count different things).
    """
    epochs = check_number(epochs, "epochs", who="fit", low=1, integer=True)
    eval_every = check_number(eval_every, "eval_every", who="fit", low=1, integer=True,
                              hint="evaluate every N epochs with eval_every=N (1 = every epoch)")
    _check_arguments(model, batches, optimizer, loss_fn, epochs, adapters)
    log = _scalar_sink(logger)
    for adapter in adapters:
        model = adapter.setup(model, optimizer)
    _check_optimizer_holds_parameters(model, optimizer)
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
            values = _checked_values(terms, epoch, ctx.step)
            ctx.loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            ctx.loss.backward()
            for adapter in adapters:
                adapter.before_optimizer_step(ctx)
            optimizer.step()
            for adapter in adapters:
                adapter.after_step(ctx)
            for name, value in values.items():
                sums[name] += value
            n_batches += 1
            ctx.step += 1
            if log_steps and log is not None:
                for name, value in values.items():
                    log(f"step/loss/{name}", value, ctx.step)
        if n_batches == 0:
            raise PriorlabError(_no_batch_message(epoch))
        for adapter in adapters:
            adapter.on_epoch_end(ctx)
        epoch_log = {f"loss/{name}": total / n_batches for name, total in sums.items()}
        evaluated = evaluate is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
        if evaluated:
            model.eval()
            with torch.no_grad():
                scores = evaluate(model)
            epoch_log.update(_checked_scores(scores))
            model.train()
        for name, value in epoch_log.items():
            history[name].append(value)
            if log is not None:
                log(name, value, epoch + 1)
        if evaluated:
            history["epoch"].append(epoch + 1)
    if hasattr(logger, "flush"):
        logger.flush()
    return dict(history)


def _check_arguments(model, batches, optimizer, loss_fn, epochs: int, adapters) -> None:
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PriorlabError(f"fit: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}; build it over model.parameters()")
    if not callable(loss_fn):
        raise PriorlabError(f"fit: loss_fn must be callable (outputs, targets) -> loss, got "
                            f"{type(loss_fn).__name__}")
    if not callable(batches) and not isinstance(batches, Iterable):
        raise PriorlabError(f"fit: batches must be an iterable of (inputs, targets[, indices]) or "
                            f"a function returning one, got {type(batches).__name__}")
    if epochs > 1 and isinstance(batches, Iterator):
        raise PriorlabError(f"fit: batches is a one-shot iterator ({type(batches).__name__}), "
                            f"which would be exhausted after epoch 1 of {epochs}; pass a function "
                            "that returns a fresh iterable (batches=lambda: make_batches()) or a "
                            "re-iterable such as a list or a DataLoader")
    for adapter in adapters:
        if not isinstance(adapter, Adapter):
            raise PriorlabError(f"fit: adapters must be priorlab.hooks.Adapter instances, got "
                                f"{type(adapter).__name__}")
    unsafe = [type(a).__name__ for a in adapters if not a.ddp_safe]
    if unsafe and torch.distributed.is_available() and torch.distributed.is_initialized():
        raise PriorlabError(f"fit: adapter(s) {', '.join(unsafe)} are not safe under distributed "
                            "data parallel (their state would diverge across processes); train "
                            "them in a single process")


def _check_optimizer_holds_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise PriorlabError("fit: the optimizer holds none of the model's parameters, so training "
                            "would change nothing; build it over this model's parameters, e.g. "
                            "torch.optim.SGD(model.parameters(), lr=0.1)")


def _checked_values(terms: dict, epoch: int, step: int) -> dict[str, float]:
    """Each loss term as a float; a non-scalar or non-finite term raises (before backward, so
    the weights stay as they were)."""
    values = {}
    for name, term in terms.items():
        if not isinstance(term, torch.Tensor) or term.numel() != 1:
            got = tuple(term.shape) if isinstance(term, torch.Tensor) else type(term).__name__
            raise PriorlabError(f"fit: loss term {name!r} must be a one-element tensor, got {got}; "
                                "reduce it (e.g. .mean())")
        values[name] = float(term.detach())
        if not math.isfinite(values[name]):
            raise PriorlabError(f"fit: loss term {name!r} is {values[name]} at epoch {epoch + 1}, "
                                f"step {step + 1}: training diverged; lower the learning rate, "
                                "clip gradients or check the inputs")
    return values


def _no_batch_message(epoch: int) -> str:
    if epoch == 0:
        return "fit: the data yielded no batch; check the dataset and batch size"
    return (f"fit: batches yielded no batch in epoch {epoch + 1}: the iterable was exhausted after "
            f"epoch {epoch}; pass a function that returns a fresh iterable each epoch or a "
            "re-iterable such as a list or a DataLoader")


def _scalar_sink(logger) -> Callable[[str, float, int], None] | None:
    """``logger`` as one function ``(name, value, step)``: a SummaryWriter's add_scalar, or the
    callable itself."""
    if logger is None:
        return None
    if callable(getattr(logger, "add_scalar", None)):
        return logger.add_scalar
    if callable(logger):
        return logger
    raise PriorlabError(f"fit: logger must be a TensorBoard SummaryWriter (anything with add_scalar) "
                        f"or a callable (name, value, step), got {type(logger).__name__}")


def _checked_scores(scores) -> dict[str, float]:
    if not isinstance(scores, dict):
        raise PriorlabError(f"fit: evaluate(model) must return a dict of name -> number, got "
                            f"{type(scores).__name__}")
    checked = {}
    for name, value in scores.items():
        if not isinstance(name, str) or name == "epoch" or name.startswith("loss/"):
            raise PriorlabError(f"fit: evaluate returned the key {name!r}, which would mix with the "
                                "training history ('epoch', 'loss/...'); rename it, e.g. "
                                f"'eval/{name}'")
        try:
            checked[name] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise PriorlabError(f"fit: evaluate returned {name!r} = {value!r}, which is not a "
                                "number") from None
    return checked


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
