"""Lightning bridge (extra ``[lightning]``): a callback for the hooks, a mixin for the loss terms.

    class Net(PriorlabLossMixin, L.LightningModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            return self.priorlab_loss(F.cross_entropy(logits, y), inputs=x, outputs=logits, targets=y)

    L.Trainer(callbacks=[PriorlabCallback([RandomTeacher(teacher)])]).fit(Net(), loader)

The callback sets the adapters up at the start of fit, calls ``before_optimizer_step`` from
Lightning's ``on_before_optimizer_step`` (after backward, before gradient clipping and the step),
``after_step`` at the end of each training batch and ``on_epoch_end`` at the end of each training
epoch, and saves the adapters' state in Lightning checkpoints. ``priorlab_loss`` adds the
adapters' terms to the task loss and logs each as ``loss/<name>`` (epoch means, as
:func:`priorlab.train.fit`'s history). Manual optimisation works the same way as long as
``training_step`` calls ``priorlab_loss`` and makes one optimiser step per batch; gradient
accumulation is refused (the hooks would run once per accumulated batch, not per step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter
from priorlab.integrations.runner import AdapterRunner

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package has the same API
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("priorlab.integrations.lightning needs Lightning: "
                          "pip install 'priorlab[lightning]'") from None


class PriorlabCallback(pl.Callback):
    """Runs ``adapters``' gradient, step and epoch hooks inside a Lightning ``Trainer``."""

    def __init__(self, adapters: Sequence[Adapter]):
        self.runner = AdapterRunner(adapters, "PriorlabCallback")

    @property
    def state_key(self) -> str:
        return f"PriorlabCallback[{', '.join(type(a).__name__ for a in self.runner.adapters)}]"

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise PriorlabError(f"PriorlabCallback: accumulate_grad_batches="
                                f"{trainer.accumulate_grad_batches} is not supported; the adapters' "
                                "hooks run once per batch")
        if len(trainer.optimizers) > 1:
            raise PriorlabError(f"PriorlabCallback: the module configures {len(trainer.optimizers)} "
                                "optimizers; the adapters' hooks assume one")
        self.runner.setup(pl_module, trainer.optimizers[0] if trainer.optimizers else None)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.runner.before_optimizer_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.runner.after_step()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.runner.epoch_end()

    def state_dict(self) -> dict:
        return self.runner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.runner.load_state_dict(state_dict)


class PriorlabLossMixin:
    """For a ``LightningModule``: ``self.priorlab_loss(task_loss, inputs=, outputs=, targets=)``
    returns the task loss plus the adapters' terms and logs every term as ``loss/<name>``."""

    def priorlab_loss(self, task_loss: torch.Tensor, *, inputs, outputs: torch.Tensor, targets,
                      indices=None, on_step: bool = False) -> torch.Tensor:
        callbacks = [c for c in self.trainer.callbacks if isinstance(c, PriorlabCallback)]
        if len(callbacks) != 1:
            raise PriorlabError(f"priorlab_loss needs exactly one PriorlabCallback in the Trainer's "
                                f"callbacks, found {len(callbacks)}; pass "
                                "L.Trainer(callbacks=[PriorlabCallback(adapters)])")
        runner = callbacks[0].runner
        terms = {"task": task_loss, **runner.loss_terms(inputs, outputs, targets, indices)}
        runner.record(terms)
        batch_size = outputs.shape[0] if isinstance(outputs, torch.Tensor) and outputs.ndim else None
        for name, value in terms.items():
            self.log(f"loss/{name}", value.detach(), on_step=on_step, on_epoch=True, batch_size=batch_size)
        loss = sum(terms.values())
        runner.ctx.loss = loss
        return loss
