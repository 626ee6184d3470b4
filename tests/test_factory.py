"""The name factory: every name builds, wrappers compose, bad names and arguments are caught, and
every optimiser the factory can build takes a closure in step()."""

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import priorlab
from priorlab.errors import PriorlabError, UsageError
from priorlab.methods.elr import ELR
from priorlab.optim import Lion, PerpGrad

BASES = [name for name in priorlab.list_optimizers() if name not in priorlab.list_optimizer_wrappers()]
COMBINED = BASES + [f"{wrapper}+{base}" for wrapper in priorlab.list_optimizer_wrappers() for base in BASES]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def test_the_done_when_line_runs_in_a_fresh_interpreter():
    code = ("import priorlab, torch; "
            "print(type(priorlab.create_optimizer(torch.nn.Linear(2,2), 'lion')).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Lion"


def test_the_table_holds_card_optimizers_priorlab_extras_and_torch_standards():
    names = priorlab.list_optimizers()
    assert {"lion", "perpgrad", "normalized-gd", "sgd", "adam", "adamw"} <= set(names)
    assert priorlab.list_optimizer_wrappers() == ["perpgrad"]
    assert names == sorted(names)


def test_adapters_are_the_cards_with_an_adapter_factory():
    assert {"elr", "pskd", "random-teacher", "backslash"} <= set(priorlab.list_adapters())
    adapter = priorlab.create_adapter("ELR", num_samples=10, num_classes=3, lam=1.5)
    assert isinstance(adapter, ELR) and adapter.lam == 1.5


def test_names_fold_case_and_underscores_and_kwargs_reach_the_base():
    optimizer = priorlab.create_optimizer(_model(), " Normalized_GD ", lr=0.25)
    assert type(optimizer).__name__ == "NormalizedGD" and optimizer.param_groups[0]["lr"] == 0.25
    optimizer = priorlab.create_optimizer(_model(), "AdamW", lr=3e-3, weight_decay=0.5)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 0.5


def test_wrappers_compose_outside_in_and_take_their_own_kwargs():
    optimizer = priorlab.create_optimizer(_model(), "perpgrad+lion", lr=1e-3,
                                          wrapper_kwargs={"PerpGrad": {"eps": 1e-20}})
    assert isinstance(optimizer, PerpGrad) and optimizer.eps == 1e-20
    assert isinstance(optimizer.base_optimizer, Lion)
    assert optimizer.base_optimizer.param_groups[0]["lr"] == 1e-3


def test_the_factory_builds_the_same_optimizer_as_the_constructor():
    x, y = _data()
    built, by_hand = _model(), _model()
    optimizers = [priorlab.create_optimizer(built, "perpgrad+adamw", lr=1e-2),
                  PerpGrad(torch.optim.AdamW(by_hand.parameters(), lr=1e-2))]
    for model, optimizer in zip((built, by_hand), optimizers):
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(built.parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameter_groups_and_frozen_parameters():
    model = _model()
    model[0].weight.requires_grad_(False)
    optimizer = priorlab.create_optimizer(model, "sgd", lr=0.1)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model[0].weight) not in held and id(model[2].weight) in held
    groups = [{"params": model[0].parameters(), "lr": 0.5}, {"params": model[2].parameters()}]
    optimizer = priorlab.create_optimizer(groups, "lion", lr=1e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 1e-4]


@pytest.mark.parametrize("name, message", [
    ("lino", "did you mean 'lion'"),
    ("perpgrad", "cannot come last"),
    ("lion+adam", "not a wrapper"),
    ("perpgrad+", r"'\+'-joined part"),
    ("", "create_optimizer: name"),
])
def test_bad_names_are_explained(name, message):
    with pytest.raises(PriorlabError, match=message):
        priorlab.create_optimizer(_model(), name)


def test_unknown_names_are_usage_errors_with_a_suggestion():
    with pytest.raises(UsageError, match="did you mean 'adam', 'adamw'"):
        priorlab.create_optimizer(_model(), "adamv")
    with pytest.raises(UsageError, match="unknown adapter 'psdk'; did you mean 'pskd'"):
        priorlab.create_adapter("psdk")


def test_bad_arguments_name_what_is_accepted():
    with pytest.raises(PriorlabError, match="unexpected keyword argument 'lrr'.*accepts lr, betas"):
        priorlab.create_optimizer(_model(), "lion", lrr=1e-3)
    with pytest.raises(PriorlabError, match="accepts eps"):
        priorlab.create_optimizer(_model(), "perpgrad+sgd", wrapper_kwargs={"perpgrad": {"epsilon": 1}})
    with pytest.raises(PriorlabError, match="not a wrapper in"):
        priorlab.create_optimizer(_model(), "lion", wrapper_kwargs={"perpgrad": {}})
    with pytest.raises(PriorlabError, match="missing a required argument: 'num_classes'"):
        priorlab.create_adapter("elr", num_samples=3)
    with pytest.raises(PriorlabError, match="no trainable parameters"):
        priorlab.create_optimizer(nn.ReLU(), "sgd")
    with pytest.raises(PriorlabError, match="model_or_params must be"):
        priorlab.create_optimizer(torch.zeros(3), "sgd")
    with pytest.raises(PriorlabError, match="lr must be"):  # the optimiser's own checks still run
        priorlab.create_optimizer(_model(), "lion", lr=-1.0)


@pytest.mark.parametrize("name", COMBINED)
def test_every_buildable_optimizer_takes_a_closure(name):
    """step(closure) evaluates the closure once, returns its loss, and moves the weights exactly as
    backward() then step() does."""
    x, y = _data()
    with_closure, plain = _model(), _model()
    kwargs = {"lr": 1e-2}
    optimizer = priorlab.create_optimizer(with_closure, name, **kwargs)
    reference = priorlab.create_optimizer(plain, name, **kwargs)
    calls = []

    def closure():
        calls.append(1)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(with_closure(x), y)
        loss.backward()
        return loss

    for _ in range(2):
        returned = optimizer.step(closure)
        reference.zero_grad()
        expected = nn.functional.cross_entropy(plain(x), y)
        expected.backward()
        reference.step()
        assert returned is not None and float(returned.detach()) == float(expected.detach())
    assert len(calls) == 2
    moved = any(not torch.equal(a, b) for a, b in zip(with_closure.parameters(), _model().parameters()))
    assert moved, f"{name} did not move the weights"
    for a, b in zip(with_closure.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    copy.deepcopy(optimizer)  # a built optimizer stays copyable (checkpointing code relies on it)
