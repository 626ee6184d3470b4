"""Hugging Face Trainer bridge: same seed, same weights as fit() with the same adapters; the named
terms reach the Trainer's logs; priorlab optimisers by name through optimizer_cls_and_kwargs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import priorlab
from priorlab.errors import PriorlabError
from priorlab.methods.gg_prior import BackSlash
from priorlab.methods.random_teacher import RandomTeacher
from priorlab.optim import Lion, PerpGrad
from priorlab.train import fit

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from priorlab.integrations.hf import PriorlabHF, PriorlabTrainer, optimizer_cls_and_kwargs  # noqa: E402

EPOCHS, N = 3, 32
# float32; the Trainer shuffles the (single, full) batch, so the mean loss sums in another order
ATOL, RTOL = 1e-6, 1e-5


class _Net(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(N, 6, generator=generator), torch.randint(0, 3, (N,), generator=generator)


def _adapters():
    return [RandomTeacher(_Net(1), weight=0.5), BackSlash(rate=0.05)]


def _args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path), num_train_epochs=EPOCHS, per_device_train_batch_size=N,
                   lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, logging_steps=1,
                   report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                   label_names=["labels"])  # a plain nn.Module does not name its labels
    return TrainingArguments(**{**options, **overrides})


def _dataset():
    x, y = _data()
    return [{"x": x[i], "labels": y[i]} for i in range(N)]


def test_the_trainer_matches_fit_and_logs_every_term(tmp_path):
    model = _Net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    history = fit(model, [_data()], optimizer, F.cross_entropy, epochs=EPOCHS, adapters=_adapters(),
                  show_progress=False)

    hf_model, bridge = _Net(0), PriorlabHF(_adapters())
    trainer = Trainer(model=hf_model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[bridge],
                      compute_loss_func=bridge.compute_loss,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("perpgrad+lion", lr=1e-2))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, PerpGrad)
    assert any(not torch.equal(a, b) for a, b in zip(hf_model.parameters(), _Net(0).parameters()))
    for got, want in zip(hf_model.parameters(), model.parameters()):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    logged = [entry for entry in trainer.state.log_history if "loss/distill" in entry]
    assert [entry["step"] for entry in logged] == [1, 2, 3]
    for name in ("loss/task", "loss/distill"):
        assert [entry[name] for entry in logged] == pytest.approx(history[name], rel=1e-5)
    assert bridge.runner.adapters[1].steps == EPOCHS and bridge.runner.ctx.epoch == EPOCHS


class _Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_priorlab_trainer_puts_the_terms_into_logs_every_callback_sees(tmp_path):
    recorder = _Recorder()
    trainer = PriorlabTrainer(model=_Net(0), args=_args(tmp_path), train_dataset=_dataset(),
                              adapters=_adapters(), callbacks=[recorder],
                              optimizer_cls_and_kwargs=optimizer_cls_and_kwargs("lion", lr=1e-3))
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                      else trainer.optimizer, Lion)
    assert sum("loss/distill" in logs for logs in recorder.logs) == EPOCHS
    assert all(logs["loss/distill"] > 0 for logs in recorder.logs if "loss/distill" in logs)


def test_optimizer_names_are_checked_when_the_pair_is_made():
    assert optimizer_cls_and_kwargs("lion", lr=1e-3) == (Lion, {"lr": 1e-3})
    with pytest.raises(PriorlabError, match="did you mean 'lion'"):
        optimizer_cls_and_kwargs("perpgrad+lino")
    with pytest.raises(PriorlabError, match="unexpected keyword argument"):
        optimizer_cls_and_kwargs("perpgrad+lion", learning_rate=1e-3)


def test_gradient_accumulation_is_refused(tmp_path):
    trainer = PriorlabTrainer(model=_Net(0), args=_args(tmp_path, gradient_accumulation_steps=2),
                              train_dataset=_dataset(), adapters=_adapters())
    with pytest.raises(PriorlabError, match="gradient_accumulation_steps"):
        trainer.train()


def test_a_composed_name_builds_in_both_call_styles_of_the_trainer():
    builder, kwargs = optimizer_cls_and_kwargs("perpgrad+lion", lr=1e-3)
    model = _Net(0)
    groups = [{"params": list(model.parameters()), "weight_decay": 0.0}]
    for optimizer in (builder(groups, **kwargs), builder()(model, **kwargs)):
        assert isinstance(optimizer, PerpGrad) and isinstance(optimizer.base_optimizer, Lion)
        assert optimizer.param_groups[0]["lr"] == 1e-3
