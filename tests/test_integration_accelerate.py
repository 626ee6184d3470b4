"""The Accelerate recipe: a hand-written loop with AdapterRunner gives fit()'s weights and terms."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import priorlab
from priorlab.integrations import AdapterRunner
from priorlab.methods.gg_prior import BackSlash
from priorlab.methods.random_teacher import RandomTeacher
from priorlab.train import fit

accelerate = pytest.importorskip("accelerate")

EPOCHS = 3
ATOL, RTOL = 1e-6, 1e-5  # float32; the same operations in the same order


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _loader():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _adapters():
    return [RandomTeacher(_net(1), weight=0.5), BackSlash(rate=0.05)]


def _accelerate_loop(logged):
    """The recipe (README): prepare as usual, then call the runner where fit() calls the hooks."""
    accelerator = accelerate.Accelerator(cpu=True)
    model = _net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader())
    runner = AdapterRunner(_adapters(), "accelerate loop")
    runner.setup(model, optimizer)
    for _ in range(EPOCHS):
        for x, y in loader:
            logits = model(x)
            terms = {"task": F.cross_entropy(logits, y), **runner.loss_terms(x, logits, y)}
            runner.record(terms)
            optimizer.zero_grad()
            accelerator.backward(sum(terms.values()))
            runner.before_optimizer_step()
            optimizer.step()
            runner.after_step()
        runner.epoch_end()
        logged.append(runner.take_means())  # e.g. accelerator.log(runner.take_means(), step=epoch)
    return accelerator.unwrap_model(model)


def test_the_accelerate_recipe_matches_fit():
    model = _net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    history = fit(model, _loader(), optimizer, F.cross_entropy, epochs=EPOCHS, adapters=_adapters(),
                  show_progress=False)
    logged = []
    trained = _accelerate_loop(logged)
    for got, want in zip(trained.parameters(), model.parameters()):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for name in ("loss/task", "loss/distill"):
        assert [epoch[name] for epoch in logged] == pytest.approx(history[name], rel=1e-6)
