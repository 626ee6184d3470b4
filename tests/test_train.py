"""train.fit: history on a tiny problem, and a clear error for each misuse (issue 16)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter
from priorlab.train import fit


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    batch = (torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen))
    return model, batch, torch.optim.SGD(model.parameters(), lr=0.1)


def _fit(model, batches, optimizer, **kwargs):
    return fit(model, batches, optimizer, F.cross_entropy, show_progress=False, **kwargs)


def test_history_holds_epoch_means_and_evaluations_on_schedule():
    model, batch, opt = _problem()
    history = _fit(model, [batch, batch], opt, epochs=5, eval_every=2,
                   evaluate=lambda m: {"val_loss": F.cross_entropy(m(batch[0]), batch[1])})
    assert len(history["loss/task"]) == 5
    assert history["epoch"] == [2, 4, 5]  # every 2 epochs, and always the last
    assert history["val_loss"][-1] < history["loss/task"][0]


@pytest.mark.parametrize("eval_every", [0, -1, 1.5, True])
def test_eval_every_must_be_a_positive_integer(eval_every):
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="eval_every"):  # was ZeroDivisionError for 0
        _fit(model, [batch], opt, eval_every=eval_every, evaluate=lambda m: {"acc": 1.0})


@pytest.mark.parametrize("epochs", [0, 2.0, "3"])
def test_epochs_must_be_a_positive_integer(epochs):
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="epochs"):
        _fit(model, [batch], opt, epochs=epochs)


@pytest.mark.parametrize("key", ["epoch", "loss/task", "loss/anything"])
def test_evaluate_keys_may_not_overwrite_the_training_history(key):
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match=f"'{key}'.*rename"):
        _fit(model, [batch], opt, epochs=2, evaluate=lambda m: {key: 0.5})


@pytest.mark.parametrize("result", [[0.5], {"acc": "high"}])
def test_evaluate_must_return_a_dict_of_numbers(result):
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="evaluate"):
        _fit(model, [batch], opt, evaluate=lambda m: result)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_diverging_loss_stops_training_naming_epoch_and_step(bad):
    model, batch, opt = _problem()
    calls = []

    def loss_fn(outputs, targets):
        calls.append(1)
        loss = F.cross_entropy(outputs, targets)
        return loss * bad if len(calls) == 5 else loss  # diverges at the 5th step

    with pytest.raises(PriorlabError, match="'task'.*epoch 3, step 5.*diverged"):
        fit(model, [batch, batch], opt, loss_fn, epochs=4, show_progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # stopped before backward


def test_a_nonfinite_adapter_term_is_named():
    class Exploding(Adapter):
        def loss_terms(self, ctx):
            return {"penalty": ctx.outputs.sum() * math.nan}

    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="'penalty'.*epoch 1, step 1"):
        _fit(model, [batch], opt, adapters=[Exploding()])


def test_a_non_scalar_loss_is_refused():
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="one-element"):
        fit(model, [batch], opt, lambda out, y: F.cross_entropy(out, y, reduction="none"),
            show_progress=False)


def test_a_one_shot_generator_over_several_epochs_says_so():
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="exhausted after epoch 1.*function.*re-iterable"):
        _fit(model, (b for b in [batch, batch]), opt, epochs=2)
    # one epoch over a generator, a function returning one, or a list all work
    _fit(model, (b for b in [batch, batch]), opt, epochs=1)
    assert len(_fit(model, lambda: (b for b in [batch]), opt, epochs=2)["loss/task"]) == 2


def test_an_iterable_that_empties_after_the_first_epoch_says_so():
    class OneShot:  # re-iterable in form, but yields nothing the second time
        def __init__(self, items):
            self.items = list(items)

        def __iter__(self):
            items, self.items = self.items, []
            return iter(items)

    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="epoch 2: the iterable was exhausted after epoch 1"):
        _fit(model, OneShot([batch]), opt, epochs=2)
    with pytest.raises(PriorlabError, match="no batch; check the dataset"):
        _fit(model, [], opt)


def test_an_optimizer_over_another_models_parameters_is_refused():
    model, batch, _ = _problem()
    other = torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=0.1)
    with pytest.raises(PriorlabError, match="none of the model's parameters"):
        _fit(model, [batch], other)
    # holding only part of the model (frozen layers) is fine
    partial = torch.optim.SGD([model.weight], lr=0.1)
    _fit(model, [batch], partial)


@pytest.mark.parametrize("kwargs, words", [
    ({"model": lambda x: x}, "model"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"loss_fn": "cross_entropy"}, "loss_fn"),
    ({"batches": 3}, "batches"),
    ({"adapters": [object()]}, "adapters"),
])
def test_wrong_argument_types_are_named(kwargs, words):
    model, batch, opt = _problem()
    args = {"model": model, "batches": [batch], "optimizer": opt, "loss_fn": F.cross_entropy}
    args.update(kwargs)
    with pytest.raises(PriorlabError, match=words):
        fit(**args, show_progress=False)


def test_an_adapter_that_is_not_ddp_safe_is_refused_under_distributed(monkeypatch):
    class LocalBuffer(Adapter):
        ddp_safe = False

    model, batch, opt = _problem()
    _fit(model, [batch], opt, adapters=[LocalBuffer()])  # fine in a single process
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    with pytest.raises(PriorlabError, match="LocalBuffer.*distributed"):
        _fit(model, [batch], opt, adapters=[LocalBuffer()])
    _fit(model, [batch], opt, adapters=[Adapter()])  # ddp-safe adapters still run


def test_the_unused_adapter_flags_are_gone():
    for name in ("needs_closure", "freezes_params", "needs_teacher", "on_task_end"):
        assert not hasattr(Adapter, name)


def test_priorlab_optimizers_step_with_a_closure():
    from priorlab.optim import Lion, PerpGrad

    for make in (lambda p: Lion(p, lr=1e-2), lambda p: PerpGrad(torch.optim.SGD(p, lr=0.1))):
        model, batch, _ = _problem()
        opt = make(model.parameters())
        before = model.weight.detach().clone()

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(batch[0]), batch[1])
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert torch.is_tensor(loss) and math.isfinite(float(loss.detach()))
        assert not torch.equal(before, model.weight)


class _Penalty(Adapter):
    """A named extra loss term, so the logger must carry more than 'task'."""

    def loss_terms(self, ctx):
        return {"l2": 1e-3 * sum((p ** 2).sum() for p in ctx.model.parameters())}


def test_a_callable_logger_gets_every_loss_term_and_metric_per_epoch_and_step():
    model, batch, opt = _problem()
    records = []
    history = _fit(model, [batch, batch, batch], opt, epochs=4, eval_every=2, adapters=[_Penalty()],
                   evaluate=lambda m: {"eval/loss": F.cross_entropy(m(batch[0]), batch[1])},
                   logger=lambda name, value, step: records.append((name, value, step)), log_steps=True)
    per_epoch = [r for r in records if not r[0].startswith("step/")]
    for name in ("loss/task", "loss/l2"):
        assert [(v, s) for n, v, s in per_epoch if n == name] == list(zip(history[name], [1, 2, 3, 4]))
    assert [(v, s) for n, v, s in per_epoch if n == "eval/loss"] == list(zip(history["eval/loss"], [2, 4]))
    task_steps = [(v, s) for n, v, s in records if n == "step/loss/task"]
    assert [s for _, s in task_steps] == list(range(1, 13))  # 3 steps x 4 epochs, steps done
    assert sum(v for v, _ in task_steps[:3]) / 3 == pytest.approx(history["loss/task"][0])
    assert {n for n, _, _ in records} == {"loss/task", "loss/l2", "eval/loss", "step/loss/task",
                                          "step/loss/l2"}


def test_without_log_steps_only_epoch_values_are_logged_and_the_history_is_unchanged():
    records = []
    model, batch, opt = _problem()
    logged = _fit(model, [batch], opt, epochs=2, logger=lambda *record: records.append(record))
    model, batch, opt = _problem()
    assert logged == _fit(model, [batch], opt, epochs=2)
    assert [(n, s) for n, _, s in records] == [("loss/task", 1), ("loss/task", 2)]


@pytest.mark.parametrize("logger", ["tb", 3])
def test_a_logger_that_is_neither_a_writer_nor_callable_is_refused(logger):
    model, batch, opt = _problem()
    with pytest.raises(PriorlabError, match="logger must be a TensorBoard SummaryWriter"):
        _fit(model, [batch], opt, logger=logger)


def test_a_tensorboard_summary_writer_receives_the_curves(tmp_path):
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    model, batch, opt = _problem()
    writer = tensorboard.SummaryWriter(log_dir=str(tmp_path))
    history = _fit(model, [batch, batch], opt, epochs=3, adapters=[_Penalty()], logger=writer,
                   evaluate=lambda m: {"eval/acc": (m(batch[0]).argmax(1) == batch[1]).float().mean()})
    writer.close()
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss/task", "loss/l2", "eval/acc"}
    for name in ("loss/task", "loss/l2", "eval/acc"):
        scalars = events.Scalars(name)
        assert [e.step for e in scalars] == [1, 2, 3]
        assert [e.value for e in scalars] == pytest.approx(history[name], rel=1e-6)
