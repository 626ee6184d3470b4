"""N:M masks, SR-STE, MDGF and SDGF (priorlab.sparsity.nm; paper 32)."""

import math

import pytest
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.sparsity.nm import (
    MDGF,
    SDGF,
    SRSTE,
    NMSparsity,
    advance_nm_step,
    apply_nm_sparsity,
    decayed_mask_weight,
    is_nm_sparse,
    mask_decay_beta,
    nm_layers,
    nm_mask,
    remove_nm_sparsity,
    srste,
    structure_decay_patterns,
)


def test_nm_mask_keeps_the_largest_magnitudes_of_each_input_group():
    w = torch.tensor([[1.0, -3.0, 2.0, 0.5, 0.1, 0.2, -0.3, 0.4]])
    expected = torch.tensor([[0.0, 1, 1, 0, 0, 0, 1, 1]])
    assert torch.equal(nm_mask(w, 2, 4), expected)
    assert torch.equal(nm_mask(w, 1, 8), torch.tensor([[0.0, 1, 0, 0, 0, 0, 0, 0]]))
    assert torch.equal(nm_mask(w, 4, 4), torch.ones_like(w))


def test_groups_run_along_rows_never_across_them():
    w = torch.randn(6, 16)
    mask = nm_mask(w, 1, 16)
    assert torch.equal(mask.sum(1), torch.ones(6))
    assert torch.equal(mask.argmax(1), w.abs().argmax(1))


def test_is_nm_sparse():
    w = torch.randn(4, 8)
    assert not is_nm_sparse(w, 2, 4)
    assert is_nm_sparse(w * nm_mask(w, 2, 4), 2, 4)
    assert is_nm_sparse(torch.zeros(4, 8), 1, 4)


def test_srste_gradient_is_straight_through_plus_sparse_refined_decay():
    w = torch.randn(3, 8, requires_grad=True)
    mask = nm_mask(w, 2, 4)
    upstream = torch.randn(3, 8)
    out = srste(w, mask, lambda_w=0.5)
    assert torch.equal(out, w.detach() * mask)
    (out * upstream).sum().backward()
    torch.testing.assert_close(w.grad, upstream + 0.5 * (1 - mask) * w.detach())


def test_decayed_mask_forward_and_straight_through_backward():
    w = torch.randn(2, 4, requires_grad=True)
    mask = nm_mask(w, 1, 4)
    out = decayed_mask_weight(w, mask, 0.25)
    torch.testing.assert_close(out, w.detach() * (mask + 0.25 * (1 - mask)))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones(2, 4))


def test_mask_decay_beta_schedules():
    assert mask_decay_beta(-5, "exp", 0.1) == 1.0
    assert mask_decay_beta(0, "linear", 0.1) == 1.0
    assert mask_decay_beta(4, "linear", 0.1) == pytest.approx(0.6)
    assert mask_decay_beta(50, "linear", 0.1) == 0.0
    assert mask_decay_beta(10, "exp", 0.1) == pytest.approx(math.exp(-1))


def test_structure_decay_patterns_and_sdgf_intervals():
    assert structure_decay_patterns(1, 16) == [(15, 16), (8, 16), (4, 16), (2, 16), (1, 16)]
    assert structure_decay_patterns(2, 4) == [(3, 4), (2, 4)]
    sdgf = SDGF(total_steps=120, dense_steps=10, fine_tune_steps=10)  # 100 steps, 20 per pattern
    got = [sdgf.pattern(1, 16, t) for t in (0, 9, 10, 29, 30, 50, 109, 115, 500)]
    assert got == [None, None, (15, 16), (15, 16), (8, 16), (4, 16), (1, 16), (1, 16), (1, 16)]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model, steps=5):
    x, y = torch.randn(32, 16, generator=torch.Generator().manual_seed(1)), torch.arange(32) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        if nm_layers(model):
            advance_nm_step(model)
    # parametrised layers keep their weight as "<layer>.parametrizations.weight.original"
    return {name.replace("parametrizations.weight.original", "weight"): p.detach().clone()
            for name, p in sorted(model.named_parameters())}


def test_n_equal_m_trains_exactly_like_the_dense_model():
    for recipe in (SRSTE(lambda_w=0.1), MDGF(rate=0.5)):
        sparse = _model()
        apply_nm_sparsity(sparse, 4, 4, recipe)
        torch.testing.assert_close(_train(sparse), _train(_model()), rtol=0, atol=1e-6)


def test_only_the_chosen_layers_are_sparsified_and_eval_is_exactly_nm():
    model = _model()
    changed = apply_nm_sparsity(model, 1, 16, SRSTE(), exclude=("4",))
    assert changed == ["0", "2"] and list(nm_layers(model)) == ["0", "2"]
    _train(model)
    model.eval()
    assert is_nm_sparse(model[0].weight, 1, 16) and is_nm_sparse(model[2].weight, 1, 16)
    assert not is_nm_sparse(model[4].weight, 1, 16)
    assert apply_nm_sparsity(_model(), 1, 16, include=("2",)) == ["2"]


def test_mdgf_starts_dense_and_decays_pruned_weights():
    model = _model()
    dense = _model()
    apply_nm_sparsity(model, 1, 16, MDGF(decay="linear", rate=0.25), exclude=("4",))
    x = torch.randn(5, 16)
    torch.testing.assert_close(model(x), dense(x))  # beta(0) = 1
    advance_nm_step(model, 2)  # beta = 0.5
    w = model[0].parametrizations.weight.original
    mask = nm_mask(w, 1, 16)
    torch.testing.assert_close(model[0].weight, w * (mask + 0.5 * (1 - mask)))
    advance_nm_step(model, 2)  # beta = 0: binary in training too
    assert is_nm_sparse(model[0].weight, 1, 16)


def test_recipes_differ_from_the_srste_baseline():
    runs = {}
    for name, recipe in {"srste": SRSTE(), "mdgf": MDGF(rate=0.1), "sdgf": SDGF(total_steps=8)}.items():
        model = _model()
        apply_nm_sparsity(model, 1, 16, recipe, exclude=("4",))
        runs[name] = _train(model, steps=4)
    for other in ("mdgf", "sdgf"):
        assert any(not torch.allclose(runs["srste"][k], runs[other][k]) for k in runs["srste"])


def test_state_dict_carries_the_clock_and_remove_bakes_exact_nm_weights():
    model = _model()
    apply_nm_sparsity(model, 1, 16, SDGF(total_steps=10), exclude=("4",))
    _train(model, steps=9)
    assert model.state_dict()["0.parametrizations.weight.0.step"] == 9
    copy = _model(seed=3)
    apply_nm_sparsity(copy, 1, 16, SDGF(total_steps=10), exclude=("4",))
    copy.load_state_dict(model.state_dict())
    assert nm_layers(copy)["0"].pattern() == (1, 16)
    model.eval()
    x = torch.randn(4, 16)
    before = model(x)
    assert remove_nm_sparsity(model) == ["0", "2"]
    assert type(model[0]) is nn.Linear and not nm_layers(model)
    assert is_nm_sparse(model[0].weight, 1, 16)
    torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("bad", [
    lambda: nm_mask(torch.randn(3, 8), 0, 4),
    lambda: nm_mask(torch.randn(3, 8), 2.5, 4),
    lambda: nm_mask(torch.randn(3, 6), 2, 4),
    lambda: nm_mask(torch.randint(0, 3, (3, 8)), 2, 4),
    lambda: nm_mask([[1.0, 2.0]], 1, 2),
    lambda: srste(torch.randn(3, 8), torch.ones(8, 3)),
    lambda: srste(torch.randn(3, 8), torch.ones(3, 8), lambda_w=-1.0),
    lambda: decayed_mask_weight(torch.randn(2, 4), torch.ones(2, 4), 1.5),
    lambda: mask_decay_beta(3, "cosine"),
    lambda: MDGF(decay="lin"),
    lambda: MDGF(rate=-1e-3),
    lambda: SRSTE(lambda_w=float("inf")),
    lambda: SDGF(total_steps=0),
    lambda: SDGF(total_steps=10, dense_steps=4, fine_tune_steps=6),
    lambda: structure_decay_patterns(3, 8),
    lambda: structure_decay_patterns(4, 4),
    lambda: NMSparsity(2, 4, recipe=MDGF),
    lambda: NMSparsity(3, 8, recipe=SDGF(total_steps=5)),
    lambda: apply_nm_sparsity(nn.Sequential(nn.Linear(6, 2)), 2, 4),
    lambda: apply_nm_sparsity(_model(), 1, 16, include=("nothing",)),
    lambda: advance_nm_step(_model()),
])
def test_bad_input_raises_a_clear_error(bad):
    with pytest.raises(PriorlabError):
        bad()


def test_applying_twice_is_an_error():
    model = _model()
    apply_nm_sparsity(model, 1, 16, exclude=("4",))
    with pytest.raises(PriorlabError, match="already N:M sparse"):
        apply_nm_sparsity(model, 1, 16, exclude=("4",))


def test_srste_rejects_a_bad_weight_or_mask():
    # fuzz findings: a list weight crashed with AttributeError; a NaN or non-binary mask (or a
    # NaN weight) returned NaN / a silently scaled weight
    weight, mask = torch.randn(2, 4), torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 2)
    with pytest.raises(PriorlabError, match="weight"):
        srste(weight.tolist(), mask)
    with pytest.raises(PriorlabError, match="weight"):
        srste(torch.where(mask.bool(), float("nan"), weight), mask)
    with pytest.raises(PriorlabError, match="mask"):
        srste(weight, torch.where(mask.bool(), float("nan"), mask))
    with pytest.raises(PriorlabError, match="mask must be binary"):
        srste(weight, mask * 0.5)
    with pytest.raises(PriorlabError, match="mask"):
        srste(weight, mask.to(torch.complex64))
