"""The Accelerate recipe: a hand-written loop with AdapterRunner gives fit()'s weights and terms."""

import pytest
import torch
import torch.nn.functional as F

import priorlab
from integration_setup import ATOL, EPOCHS, RTOL, tiny_adapters, tiny_loader, tiny_net
from priorlab.integrations import AdapterRunner
from priorlab.train import fit

accelerate = pytest.importorskip("accelerate")




def _accelerate_loop(logged):
    """The recipe (README): prepare as usual, then call the runner where fit() calls the hooks."""
    accelerator = accelerate.Accelerator(cpu=True)
    model = tiny_net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, tiny_loader())
    runner = AdapterRunner(tiny_adapters(), "accelerate loop")
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
    model = tiny_net(0)
    optimizer = priorlab.create_optimizer(model, "perpgrad+lion", lr=1e-2)
    history = fit(model, tiny_loader(), optimizer, F.cross_entropy, epochs=EPOCHS, adapters=tiny_adapters(),
                  show_progress=False)
    logged = []
    trained = _accelerate_loop(logged)
    for got, want in zip(trained.parameters(), model.parameters()):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)
    for name in ("loss/task", "loss/distill"):
        assert [epoch[name] for epoch in logged] == pytest.approx(history[name], rel=1e-6)
