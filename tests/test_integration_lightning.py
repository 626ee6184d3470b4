"""Lightning bridge: same seed, same weights as fit() with the same adapters; terms are logged."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import priorlab
from priorlab.errors import PriorlabError
from priorlab.methods.gg_prior import BackSlash
from priorlab.methods.random_teacher import RandomTeacher
from priorlab.train import fit

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from priorlab.integrations.lightning import PriorlabCallback, PriorlabLossMixin  # noqa: E402

EPOCHS = 3
ATOL, RTOL = 1e-6, 1e-5  # float32; the two loops run the same operations in the same order


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _loader():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _adapters():
    return [RandomTeacher(_net(1), weight=0.5), BackSlash(rate=0.05)]


class _Module(PriorlabLossMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = _net(0)

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
    model = _net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    history = fit(model, _loader(), optimizer, F.cross_entropy, epochs=EPOCHS, adapters=_adapters(),
                  show_progress=False)

    module, callback = _Module(), PriorlabCallback(_adapters())
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(module, _loader())
    moved = any(not torch.equal(a, b) for a, b in zip(module.net.parameters(), _net(0).parameters()))
    assert moved
    for got, want in zip(module.net.parameters(), model.parameters()):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for name in ("loss/task", "loss/distill"):
        assert float(trainer.logged_metrics[name]) == pytest.approx(history[name][-1], rel=1e-5)
    assert callback.runner.ctx.step == EPOCHS * 4 and callback.runner.ctx.epoch == EPOCHS
    assert callback.runner.adapters[1].steps == EPOCHS * 4  # BackSlash ran after every step


def test_the_adapters_state_travels_in_lightning_checkpoints(tmp_path):
    module, callback = _Module(), PriorlabCallback(_adapters())
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(module, _loader())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"][callback.state_key]
    assert saved["step"] == EPOCHS * 4 and saved["adapters"][1]["steps"] == EPOCHS * 4
    restored = PriorlabCallback(_adapters())
    restored.load_state_dict(saved)
    assert restored.runner.adapters[1].steps == EPOCHS * 4


def test_the_mixin_without_the_callback_and_gradient_accumulation_are_refused(tmp_path):
    with pytest.raises(PriorlabError, match="exactly one PriorlabCallback"):
        _trainer(tmp_path, []).fit(_Module(), _loader())
    with pytest.raises(PriorlabError, match="accumulate_grad_batches"):
        trainer = _trainer(tmp_path, [PriorlabCallback(_adapters())], accumulate_grad_batches=2)
        trainer.fit(_Module(), _loader())
