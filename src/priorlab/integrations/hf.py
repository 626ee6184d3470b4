"""Hugging Face Trainer bridge (extra ``[hf]``): a TrainerCallback for the hooks plus a
``compute_loss_func`` for the loss terms, and priorlab optimisers by name.

    bridge = PriorlabHF([RandomTeacher(teacher)], task_loss=F.cross_entropy)
    trainer = Trainer(model, args, train_dataset=data, callbacks=[bridge],
                      compute_loss_func=bridge.compute_loss,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("perpgrad+lion", lr=1e-4))

or, equivalently, ``PriorlabTrainer(model, args, adapters=[...], task_loss=..., ...)``, which also
puts the named terms into the logs before any reporting integration (TensorBoard, W&B) sees them;
with the plain ``Trainer`` they reach ``trainer.state.log_history`` and the callbacks listed
after the bridge. Terms are logged as ``loss/<name>`` (means since the last log).

The bridge reads the model's input from a forward pre-hook (the batch without ``labels``: the
tensor itself when the model takes one argument, else the keyword dict) and its output from
``outputs`` (a tensor, or ``outputs.logits``). Adapters run only while the model trains, so
evaluation computes the task loss alone. Gradient accumulation is refused (the adapters' hooks
would run per micro-batch), and so are adapters that need per-sample indices. A model whose
``forward`` has no ``labels`` argument needs ``TrainingArguments(label_names=["labels"])``, or the
Trainer drops the labels before the loss sees them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from priorlab.errors import PriorlabError
from priorlab.factory import _fold, _is_wrapper, _optimizer_table, create_optimizer
from priorlab.hooks import Adapter
from priorlab.integrations.runner import AdapterRunner

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise ImportError("priorlab.integrations.hf needs transformers: pip install 'priorlab[hf]'") from None


def _logits(outputs) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor):
        raise PriorlabError(f"PriorlabHF: cannot find the logits in the model's output "
                            f"({type(outputs).__name__}); return a tensor or an object with .logits")
    return logits


class PriorlabHF(TrainerCallback):
    """Runs ``adapters`` inside a ``transformers.Trainer``; pass it as a callback and its
    :meth:`compute_loss` as ``compute_loss_func``. ``task_loss(logits, labels)`` is the loss the
    adapters' terms are added to."""

    def __init__(self, adapters: Sequence[Adapter],
                 task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy):
        if not callable(task_loss):
            raise PriorlabError(f"PriorlabHF: task_loss must be callable (logits, labels) -> loss, got "
                                f"{type(task_loss).__name__}")
        self.runner = AdapterRunner(adapters, "PriorlabHF")
        self.task_loss = task_loss
        self._inputs = None
        self._hook = None

    def _capture_inputs(self, module, args, kwargs) -> None:
        values = [*args, *kwargs.values()]
        self._inputs = values[0] if len(values) == 1 else (kwargs if not args else args)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.gradient_accumulation_steps != 1:
            raise PriorlabError(f"PriorlabHF: gradient_accumulation_steps="
                                f"{args.gradient_accumulation_steps} is not supported; the adapters' "
                                "hooks run once per batch")
        self.runner.setup(model, optimizer)
        if self._hook is None:
            self._hook = model.register_forward_pre_hook(self._capture_inputs, with_kwargs=True)

    def compute_loss(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        """The task loss plus, while the model trains, every adapter's term."""
        logits = _logits(outputs)
        task = self.task_loss(logits, labels)
        ctx = self.runner.ctx
        if ctx is None or not ctx.model.training:
            return task
        terms = {"task": task, **self.runner.loss_terms(self._inputs, logits, labels)}
        self.runner.record(terms)
        ctx.loss = sum(terms.values())
        return ctx.loss

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.runner.before_optimizer_step()

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.runner.after_step()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.runner.epoch_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or any(key.startswith("loss/") for key in logs):
            return  # not a training log, or PriorlabTrainer.log has added the terms already
        means = self.runner.take_means()
        logs.update(means)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(means)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class PriorlabTrainer(Trainer):
    """A ``Trainer`` wired to a :class:`PriorlabHF` bridge: ``adapters=`` and ``task_loss=`` besides
    the usual arguments; the named terms join every training log before the callbacks see it."""

    def __init__(self, *args, adapters: Sequence[Adapter], task_loss=F.cross_entropy, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise PriorlabError("PriorlabTrainer sets compute_loss_func itself; pass task_loss instead")
        self.priorlab = PriorlabHF(adapters, task_loss)
        kwargs["compute_loss_func"] = self.priorlab.compute_loss
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.priorlab]
        super().__init__(*args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update(self.priorlab.runner.take_means())
        super().log(logs, *args, **kwargs)


def optimizer_cls_and_kwargs(name: str, **kwargs) -> tuple:
    """``Trainer(optimizer_cls_and_kwargs=...)`` for a priorlab optimiser name.

    A single base optimiser (``"lion"``) comes back as its class, so the Trainer builds it over its
    own parameter groups (weight decay off for biases and norms). A composed name
    (``"perpgrad+lion"``) comes back as a builder that takes either call the Trainer makes:
    ``builder(param_groups, **kwargs)`` (transformers before optimizer factories) or
    ``builder()(model, **kwargs)`` (with them; the optimiser then covers the model's trainable
    parameters in one group).
    """
    table = _optimizer_table()
    parts = _fold(name, "optimizer_cls_and_kwargs: name").split("+")
    if len(parts) == 1 and parts[0] in table and not _is_wrapper(table[parts[0]]):
        return table[parts[0]], dict(kwargs)
    create_optimizer([torch.nn.Parameter(torch.zeros(1))], name, **kwargs)  # checks name and kwargs now

    def builder(params=None, **options):
        if params is None:  # a factory call: the optimiser comes from the model
            return lambda model, **model_options: create_optimizer(model, name, **model_options)
        return create_optimizer(params, name, **options)

    return builder, dict(kwargs)
