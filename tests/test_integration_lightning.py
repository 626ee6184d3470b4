"""Lightning bridge: same seed, same weights as fit() with the same adapters; terms are logged."""

import pytest
import torch
import torch.nn.functional as F

import priorlab
from integration_setup import ATOL, EPOCHS, RTOL, tiny_adapters, tiny_loader, tiny_net
from priorlab.errors import PriorlabError
from priorlab.train import fit

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from priorlab.integrations.lightning import PriorlabCallback, PriorlabLossMixin  # noqa: E402


class _Module(PriorlabLossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = tiny_net(0)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return self.priorlab_loss(F.cross_entropy(logits, y), inputs=x, outputs=logits, targets=y)

    def configure_optimizers(self):
        return priorlab.create_optimizer(self, "perpgrad+lion", lr=1e-2)  # Lightning steps with a closure


def _trainer(tmp_path, callbacks, **kwargs):
    return L.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path)),
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=callbacks, **kwargs)


def test_lightning_matches_fit_and_logs_every_term(tmp_path):
    model = tiny_net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    history = fit(model, tiny_loader(), optimizer, F.cross_entropy, epochs=EPOCHS, adapters=tiny_adapters(),
                  show_progress=False)

    module, callback = _Module(), PriorlabCallback(tiny_adapters())
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(module, tiny_loader())
    moved = any(not torch.equal(a, b) for a, b in zip(module.net.parameters(), tiny_net(0).parameters()))
    assert moved
    for got, want in zip(module.net.parameters(), model.parameters()):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for name in ("loss/task", "loss/distill"):
        assert float(trainer.logged_metrics[name]) == pytest.approx(history[name][-1], rel=1e-5)
    assert callback.runner.ctx.step == EPOCHS * 4 and callback.runner.ctx.epoch == EPOCHS
    assert callback.runner.adapters[1].steps == EPOCHS * 4  # BackSlash ran after every step


def test_the_adapters_state_travels_in_lightning_checkpoints(tmp_path):
    module, callback = _Module(), PriorlabCallback(tiny_adapters())
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(module, tiny_loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"][callback.state_key]
    assert saved["step"] == EPOCHS * 4 and saved["adapters"][1]["steps"] == EPOCHS * 4
    restored = PriorlabCallback(tiny_adapters())
    restored.load_state_dict(saved)
    assert restored.runner.adapters[1].steps == EPOCHS * 4


def test_the_mixin_without_the_callback_and_gradient_accumulation_are_refused(tmp_path):
    with pytest.raises(PriorlabError, match="exactly one PriorlabCallback"):
        _trainer(tmp_path, []).fit(_Module(), tiny_loader())
    with pytest.raises(PriorlabError, match="accumulate_grad_batches"):
        trainer = _trainer(tmp_path, [PriorlabCallback(tiny_adapters())], accumulate_grad_batches=2)
        trainer.fit(_Module(), tiny_loader())
