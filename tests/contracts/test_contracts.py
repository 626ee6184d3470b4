"""Contracts every registered method meets; a new card is covered the moment it registers."""

import contextlib
import copy
import importlib
import io
import math
import warnings

import pytest
import torch

from priorlab.errors import PriorlabError
from priorlab.registry import all_cards, get
from priorlab.train import fit

CARDS = all_cards()
WITH_EXAMPLE = [c for c in CARDS if c.example is not None]


def _train(example, model, optimizer_fn=None, adapter_fn=None, loss_fn=None, epochs=3, state=None):
    """Train ``model`` on the example's batch; ``state`` = (optimizer, adapter) states to resume."""
    optimizer = (optimizer_fn or example.optimizer_fn)(model.parameters())
    adapter_fn = adapter_fn if adapter_fn is not None else example.adapter_fn
    adapters = [a for a in [adapter_fn()] if a is not None] if adapter_fn else []
    if state is not None:
        optimizer.load_state_dict(copy.deepcopy(state[0]))
        if adapters:
            adapters[0].load_state_dict(copy.deepcopy(state[1]))
    history = fit(model, [example.batch], optimizer, loss_fn or example.loss_fn, epochs=epochs,
                  adapters=adapters, show_progress=False)
    return history, optimizer, adapters


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_registry_is_populated_and_ids_unique():
    assert CARDS, "no method registered"
    assert len({c.id for c in CARDS}) == len(CARDS)


@pytest.mark.parametrize("card", CARDS, ids=lambda c: c.id)
def test_card_is_complete(card):
    p = card.paper
    assert 1 <= p.seed_id <= 66 and p.title and p.arxiv and p.year >= 1990 and p.licence
    for field in ("summary", "usage", "hyperparameters", "deviations", "claim_scope", "family", "kind"):
        assert getattr(card, field).strip(), f"{card.id}: empty {field}"
    assert card.kind in {"function", "module", "optimizer", "adapter", "parametrisation", "system"}
    assert card.component is not None
    assert get(card.id) is card and card in [c for c in CARDS if c.seed_id == p.seed_id]


@pytest.mark.parametrize("card", [c for c in CARDS if c.reproduction], ids=lambda c: c.id)
def test_reproduction_declares_its_claim(card):
    module = importlib.import_module(f"priorlab.reproductions.{card.reproduction}")
    claim = module.CLAIM
    assert claim.seed_id == card.seed_id
    assert get(claim.method).reproduction == card.reproduction
    assert callable(module.run)


@pytest.mark.parametrize("card", CARDS, ids=lambda c: c.id)
def test_usage_snippet_runs_and_uses_the_component(card):
    namespace = {}
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        exec(compile(card.usage, f"<usage of {card.id}>", "exec"), namespace)
    # the snippet shows the card's own component, not only something near it
    assert any(value is card.component for value in namespace.values()), \
        f"{card.id}: the usage snippet never imports {card.component!r}"
    # a snippet users copy must run cleanly and end in a finite loss where it trains
    noisy = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (UserWarning, RuntimeWarning))]
    assert not noisy, f"{card.id}: the usage snippet warns: {noisy}"
    loss = namespace.get("loss")
    if isinstance(loss, torch.Tensor):
        assert torch.isfinite(loss).all(), f"{card.id}: the usage snippet ends with loss {loss}"


def test_get_matches_ids_case_insensitively_and_suggests_case_folded():
    assert get("ELR") is get("elr") and get(" Lion ") is get("lion")
    with pytest.raises(PriorlabError, match="did you mean 'stablemax'"):
        get("StableMaxx")


@pytest.mark.parametrize("card", WITH_EXAMPLE, ids=lambda c: c.id)
def test_trains_finite_and_loss_drops(card):
    example = card.example()
    model = example.model_fn()
    before = _params(model)
    history, _, _ = _train(example, model, epochs=10)
    total = [sum(v[i] for k, v in history.items() if k.startswith("loss/")) for i in range(10)]
    assert all(math.isfinite(x) for x in total)
    assert total[-1] < total[0], f"{card.id}: loss did not drop ({total[0]:.4g} -> {total[-1]:.4g})"
    assert any(not torch.equal(a, b) for a, b in zip(before, _params(model))), "no parameter moved"
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("card", WITH_EXAMPLE, ids=lambda c: c.id)
def test_state_dict_round_trip_resumes_exactly(card):
    example = card.example()
    model = example.model_fn()
    _, optimizer, adapters = _train(example, model, epochs=2)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
             copy.deepcopy(adapters[0].state_dict()) if adapters else None)
    _train(example, model, epochs=2, state=(optimizer.state_dict(), saved[2]))
    resumed = example.model_fn()
    resumed.load_state_dict(saved[0])
    _train(example, resumed, epochs=2, state=(saved[1], saved[2]))
    for a, b in zip(_params(model), _params(resumed)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("card", [c for c in WITH_EXAMPLE if c.example().zero_strength],
                         ids=lambda c: c.id)
def test_zero_strength_equals_baseline(card):
    example = card.example()
    runs = []
    for optimizer_fn, adapter_fn, loss_fn in (example.zero_strength, example.baseline):
        model = example.model_fn()
        _train(example, model, optimizer_fn, adapter_fn or (lambda: None), loss_fn, epochs=3)
        runs.append(_params(model))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("card", [c for c in WITH_EXAMPLE if c.example().bad_args],
                         ids=lambda c: c.id)
def test_bad_arguments_raise_a_clear_error(card):
    for bad in card.example().bad_args:
        with pytest.raises(PriorlabError):
            bad()
