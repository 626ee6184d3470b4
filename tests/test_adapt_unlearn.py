"""Adapt-then-Unlearn (seed 21): the penalties, the two stages and the adapter."""

import copy
import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.unlearning import parameter_distance, repulsion_loss
from priorlab.generative.gan import Discriminator, Generator
from priorlab.methods.adapt_unlearn import (
    ParameterRepulsion,
    adapt_to_negatives,
    generator_fisher,
    unlearn_with_repulsion,
)
from priorlab.train import fit


def _pair():
    torch.manual_seed(0)
    return Generator(latent_dim=8, channels=4), Discriminator(channels=4)


def test_parameter_distance_known_values():
    params = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([2.0])}
    anchor = {"a": torch.zeros(2), "b": torch.zeros(1)}
    # official normalisation: mean over tensors of the per-tensor MSE = (1 + 4) / 2
    assert float(parameter_distance(params, anchor)) == pytest.approx(2.5)
    assert float(parameter_distance(params, anchor, normalise=False)) == pytest.approx(6.0)


@pytest.mark.parametrize("kind,expected", [("inverse", 2.0), ("exp", math.exp(-0.5)), ("negative", -0.5)])
def test_repulsion_forms_known_values(kind, expected):
    params, anchor = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.zeros(2)}  # d = 0.5
    assert float(repulsion_loss(params, anchor, kind=kind)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["inverse", "exp", "negative"])
def test_a_gradient_step_on_the_repulsion_moves_away_from_the_anchor(kind):
    w = torch.tensor([0.3, -0.2], requires_grad=True)
    anchor = {"w": torch.tensor([0.1, 0.1])}
    before = parameter_distance({"w": w}, anchor).item()
    repulsion_loss({"w": w}, anchor, kind=kind).backward()
    assert torch.isfinite(w.grad).all()
    with torch.no_grad():
        w -= 0.01 * w.grad
    assert parameter_distance({"w": w}, anchor).item() > before


def test_penalties_reject_bad_input():
    w = {"w": torch.zeros(2)}
    with pytest.raises(PriorlabError, match="inverse"):
        repulsion_loss(w, w, kind="invers")
    with pytest.raises(PriorlabError, match="shape"):
        repulsion_loss(w, {"w": torch.zeros(3)})
    with pytest.raises(PriorlabError, match="lacks"):
        parameter_distance({"w": torch.zeros(2), "v": torch.zeros(1)}, w)
    with pytest.raises(PriorlabError, match="mappings"):
        parameter_distance([torch.zeros(2)], w)
    with pytest.raises(PriorlabError, match="NaN"):
        parameter_distance(w, {"w": torch.tensor([float("nan"), 0.0])})


def test_fisher_is_non_negative_and_shaped_like_the_generator():
    g, d = _pair()
    fisher = generator_fisher(g, d, n_batches=2, batch_size=4)
    assert set(fisher) == {n for n, _ in g.named_parameters()}
    for name, p in g.named_parameters():
        assert fisher[name].shape == p.shape and (fisher[name] >= 0).all()
    assert sum(float(f.sum()) for f in fisher.values()) > 0


def test_stage_one_returns_adapted_parameters_and_leaves_the_pretrained_pair_alone():
    g, d = _pair()
    g_state, d_state = copy.deepcopy(g.state_dict()), copy.deepcopy(d.state_dict())
    theta_n, history = adapt_to_negatives(g, d, torch.rand(8, 1, 16, 16), steps=3, ewc_strength=10.0,
                                          batch_size=4, fisher_batches=1)
    assert len(history["g"]) == 3 and all(v > 0 for v in history["penalty"][1:])
    for name, value in g.state_dict().items():
        assert torch.equal(value, g_state[name])
    for name, value in d.state_dict().items():
        assert torch.equal(value, d_state[name])
    assert set(theta_n) == {n for n, _ in g.named_parameters()}
    assert any(not torch.equal(theta_n[n], p) for n, p in g.named_parameters())


def test_stage_two_with_repulsion_differs_from_plain_fine_tuning_and_moves_away():
    g, d = _pair()
    theta_n, _ = adapt_to_negatives(g, d, torch.rand(8, 1, 16, 16), steps=2, ewc_strength=10.0,
                                    batch_size=4, fisher_batches=1)
    positives = torch.rand(16, 1, 16, 16)
    runs = {}
    for gamma in (0.0, 1.0):
        gg, dd = copy.deepcopy(g), copy.deepcopy(d)
        history = unlearn_with_repulsion(gg, dd, positives, theta_n, steps=4, gamma=gamma,
                                         batch_size=4, rng=torch.Generator().manual_seed(3))
        runs[gamma] = (gg, history)
    assert runs[0.0][1]["penalty"] == [0.0] * 4 and all(v > 0 for v in runs[1.0][1]["penalty"])
    distance = {gamma: parameter_distance(dict(gg.named_parameters()), theta_n).item()
                for gamma, (gg, _) in runs.items()}
    assert distance[1.0] > distance[0.0]
    with pytest.raises(PriorlabError, match="gamma"):
        unlearn_with_repulsion(g, d, positives, theta_n, steps=1, gamma=-1.0)
    with pytest.raises(PriorlabError, match="exp"):
        unlearn_with_repulsion(g, d, positives, theta_n, steps=1, gamma=1.0, kind="expo")


def test_repulsion_adapter_in_fit_and_state_round_trip():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    anchor = {n: p.detach() + 0.1 for n, p in model.named_parameters()}
    adapter = ParameterRepulsion(anchor, gamma=1e-3, kind="exp")
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    history = fit(model, [(x, y)], torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss,
                  epochs=2, adapters=[adapter], show_progress=False)
    assert "loss/repulsion" in history
    copy_adapter = ParameterRepulsion({"weight": torch.zeros(1, 3)})
    copy_adapter.load_state_dict(adapter.state_dict())
    assert all(torch.equal(copy_adapter.anchor[n], anchor[n]) for n in anchor)
    with pytest.raises(PriorlabError, match="no parameter"):
        ParameterRepulsion({"missing": torch.zeros(1)}).setup(model, None)
