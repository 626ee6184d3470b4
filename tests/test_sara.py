"""SaRA (seed 57): sparse updates of the smallest weights, nuclear-norm term, re-selection."""

import copy

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.nn.sara import (
    SaRARegulariser,
    SparseUpdate,
    apply_sara,
    remove_sara,
    sara_modules,
    sara_parameters,
    sara_state_bytes,
    threshold_for_budget,
)
from priorlab.reproductions import p057_sara
from priorlab.train import fit


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 10, generator=g), torch.randint(0, 3, (32,), generator=g)


def test_sparse_update_known_values():
    w = torch.tensor([[0.5, -0.01], [0.02, -2.0]])
    update = SparseUpdate(w, threshold=0.1)
    assert update.mask.tolist() == [[False, True], [True, False]]
    assert update.values.tolist() == pytest.approx([-0.01, 0.02])
    with torch.no_grad():
        update.values.copy_(torch.tensor([7.0, 8.0]))
    assert update(w).tolist() == [[0.5, 7.0], [8.0, -2.0]]


def test_registration_keeps_outputs_and_trains_only_values():
    model, x = _model(), _batch()[0]
    before = model(x)
    theta = threshold_for_budget(model, 40)
    assert apply_sara(model, theta) == ["0", "2"]
    assert torch.allclose(model(x), before)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 40
    assert {id(p) for p in trainable} == {id(p) for p in sara_parameters(model)}


def test_only_selected_entries_change_and_grads_are_finite():
    model = _model()
    original = copy.deepcopy(model)
    theta = threshold_for_budget(model, 40)
    apply_sara(model, theta)
    optimizer = torch.optim.AdamW(sara_parameters(model), lr=1e-2)
    fit(model, [_batch()], optimizer, nn.functional.cross_entropy, epochs=5, show_progress=False,
        adapters=[SaRARegulariser(lambda_rank=1e-2, min_dim=8)])
    assert all(torch.isfinite(p.grad).all() for p in sara_parameters(model))
    for name in ("0", "2"):
        old, new = getattr(original, name), getattr(model, name)
        changed = new.weight.detach() != old.weight
        assert changed.any() and not (changed & (old.weight.abs() >= theta)).any()
        assert torch.equal(new.bias, old.bias)


def test_rank_penalty_is_nuclear_norm_of_the_sparse_matrix():
    model = _model()
    apply_sara(model, threshold_for_budget(model, 40))
    regulariser = SaRARegulariser(lambda_rank=2.0, min_dim=8)
    regulariser.setup(model, None)
    assert len(regulariser.low_rank) == 1  # only the 20x10 weight has both sides > 8
    update = regulariser.low_rank[0]
    sparse = torch.zeros(update.mask.shape)
    sparse[update.mask] = update.values.detach()
    expected = 2.0 * torch.linalg.matrix_norm(sparse, ord="nuc")
    assert regulariser.rank_penalty().item() == pytest.approx(expected.item(), rel=1e-5)


def test_zero_strength_matches_plain_sparse_training():
    runs = []
    for adapters in ([SaRARegulariser(lambda_rank=0.0)], []):
        model = _model()
        apply_sara(model, threshold_for_budget(model, 40))
        optimizer = torch.optim.AdamW(sara_parameters(model), lr=1e-2)
        fit(model, [_batch()], optimizer, nn.functional.cross_entropy, epochs=4,
            adapters=adapters, show_progress=False)
        runs.append(torch.cat([p.detach() for p in sara_parameters(model)]))
    assert torch.equal(*runs)


def test_reselection_freezes_entries_that_grew_and_swaps_optimizer_params():
    model = _model()
    theta = threshold_for_budget(model, 40)
    apply_sara(model, theta)
    optimizer = torch.optim.AdamW(sara_parameters(model), lr=0.05)
    regulariser = SaRARegulariser(lambda_rank=0.0, progressive_step=3)
    fit(model, [_batch()], optimizer, nn.functional.cross_entropy, epochs=6,
        adapters=[regulariser], show_progress=False)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in sara_parameters(model)}
    for module, update in sara_modules(model):
        weight = module.parametrizations.weight.original
        assert torch.equal(update.mask, weight.abs() < theta)
    assert sum(p.numel() for p in sara_parameters(model)) < 40  # lr 0.05 pushes most past theta


def test_state_bytes_and_remove():
    model = _model()
    apply_sara(model, threshold_for_budget(model, 40))
    sizes = sara_state_bytes(model)
    assert sizes == {"sparse": 3 * 4 * 40 + 200 + 60, "dense_masked": 3 * 4 * 260}
    x = _batch()[0]
    out = model(x)
    remove_sara(model)
    assert not list(sara_modules(model)) and torch.allclose(model(x), out)


def test_state_dict_round_trip():
    model = _model()
    apply_sara(model, threshold_for_budget(model, 40))
    with torch.no_grad():
        for p in sara_parameters(model):
            p.add_(0.3)
    clone = _model()  # same pretrained weights, untrained sparse values
    apply_sara(clone, threshold_for_budget(clone, 40))
    x = _batch()[0]
    assert not torch.allclose(clone(x), model(x))
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(x), model(x))


@pytest.mark.parametrize("bad", [
    lambda: apply_sara(_model(), -1.0),
    lambda: apply_sara(_model(), "small"),
    lambda: apply_sara(_model(), 0.1, target_modules=["9"]),
    lambda: apply_sara(_model(), 0.1, module_types=(int,)),
    lambda: threshold_for_budget(_model(), 10_000),
    lambda: threshold_for_budget(_model(), 2.5),
    lambda: SaRARegulariser(lambda_rank=float("inf")),
    lambda: SaRARegulariser(progressive_step=True),
    lambda: SaRARegulariser(lambda_rank=1.0, min_dim=100).setup(
        (lambda m: (apply_sara(m, 0.1), m)[1])(_model()), None),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_reproduction_arms_differ_and_budgets_match():
    cfg = p057_sara.CLAIM.tiers["smoke"]
    lora, sara = p057_sara.run("lora", cfg, 0), p057_sara.run("sara", cfg, 0)
    assert lora.info["trainable_params"] == sara.info["trainable_params"] == lora.info["lora_params"]
    assert sara.info["sparse"] < sara.info["dense_masked"]
    assert lora.metrics["source_acc"] != sara.metrics["source_acc"] or \
        lora.metrics["target_acc"] != sara.metrics["target_acc"]
    with pytest.raises(PriorlabError):
        p057_sara.run("lorra", cfg, 0)
