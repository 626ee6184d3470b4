"""ELR (seed 3): known values of loss and target update; adapter, card and reproduction."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from priorlab.data import IndexedDataset
from priorlab.errors import PriorlabError
from priorlab.functional.elr import elr_loss, elr_regularizer, elr_update_targets
from priorlab.hooks import StepContext
from priorlab.methods.elr import ELR
from priorlab.registry import get
from priorlab.train import fit



# softmax([0,0,0]) = [1/3,1/3,1/3]; softmax([ln 2,0,0]) = [1/2,1/4,1/4]
LOGITS = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]], dtype=torch.float64)
OLD_TARGETS = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
# beta = 0.7: row 0 = 0.3 * 1/3; row 1 = 0.7 * [.2,.3,.5] + 0.3 * [.5,.25,.25]
NEW_TARGETS = torch.tensor([[0.1, 0.1, 0.1], [0.29, 0.285, 0.425]], dtype=torch.float64)
# <t, p>: row 0 = 3 * 0.1/3 = 0.1; row 1 = .29*.5 + .285*.25 + .425*.25 = 0.3225
REGULARISER = (math.log(0.9) + math.log(1 - 0.3225)) / 2


def test_target_update_by_hand():
    new = elr_update_targets(OLD_TARGETS, LOGITS, beta=0.7)
    torch.testing.assert_close(new, NEW_TARGETS)
    assert torch.equal(OLD_TARGETS[1], torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))


def test_regulariser_and_loss_by_hand():
    assert elr_regularizer(LOGITS, NEW_TARGETS).item() == pytest.approx(REGULARISER, rel=1e-12)
    labels = torch.tensor([0, 2])
    ce = (math.log(3.0) + math.log(4.0)) / 2  # -log(1/3), -log(1/4)
    loss = elr_loss(LOGITS, labels, NEW_TARGETS, lam=3.0)
    assert loss.item() == pytest.approx(ce + 3.0 * REGULARISER, rel=1e-12)
    assert elr_loss(LOGITS, labels, NEW_TARGETS, lam=0.0).item() == pytest.approx(ce, rel=1e-12)


def test_clamp_renormalises_only_the_target_copy():
    logits = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)
    clamped = torch.tensor([1 - 1e-4, 1e-4, 1e-4], dtype=torch.float64)
    target = elr_update_targets(torch.zeros(1, 3, dtype=torch.float64), logits, beta=0.0)
    torch.testing.assert_close(target[0], clamped / clamped.sum())
    inner = float((target[0] * clamped).sum())  # the regulariser uses the unnormalised clamp
    assert elr_regularizer(logits, target).item() == pytest.approx(math.log(1 - inner), rel=1e-12)


def test_regulariser_pulls_prediction_towards_target():
    logits = torch.zeros(1, 3, requires_grad=True)
    target = torch.tensor([[0.0, 0.9, 0.0]], requires_grad=True)
    elr_regularizer(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] < 0 < logits.grad[0, 0]  # descent raises the target class
    assert target.grad is None  # the estimates are constants


@pytest.mark.parametrize("call", [
    lambda: elr_update_targets(torch.zeros(2, 3), torch.zeros(2, 3), beta=1.0),
    lambda: elr_update_targets(torch.zeros(2, 3), torch.zeros(2, 3), beta=-0.1),
    lambda: elr_update_targets(torch.zeros(2, 4), torch.zeros(2, 3)),
    lambda: elr_regularizer(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2)),
    lambda: elr_regularizer(torch.zeros(3), torch.zeros(3)),
    lambda: elr_regularizer(torch.zeros(1, 2), torch.tensor([[0.7, 0.7]])),
    lambda: elr_regularizer(torch.zeros(1, 2), torch.tensor([[-0.1, 0.5]])),
    lambda: elr_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3), lam=-1.0),
    lambda: elr_loss(torch.zeros(2, 3), torch.tensor([0, 1]), torch.zeros(2, 3), lam=float("nan")),
    lambda: elr_loss(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.zeros(2, 3)),
    lambda: elr_loss(torch.zeros(2, 3), torch.tensor([0, 3]), torch.zeros(2, 3)),
    lambda: ELR(num_samples=0, num_classes=3),
    lambda: ELR(num_samples=10, num_classes=1),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def _ctx(logits, indices):
    return StepContext(model=torch.nn.Identity(), optimizer=None, outputs=logits, indices=indices)


def test_adapter_without_indices_says_how_to_provide_them():
    with pytest.raises(PriorlabError, match="IndexedDataset"):
        ELR(4, 3).loss_terms(_ctx(torch.zeros(2, 3), None))


def test_adapter_rejects_out_of_range_index_and_wrong_class_count():
    with pytest.raises(PriorlabError, match="outside"):
        ELR(4, 3).loss_terms(_ctx(torch.zeros(2, 3), torch.tensor([1, 4])))
    with pytest.raises(PriorlabError, match="3 classes"):
        ELR(4, 3).loss_terms(_ctx(torch.zeros(2, 5), torch.tensor([0, 1])))


def test_adapter_term_matches_functional_and_updates_only_its_rows():
    elr = ELR(5, 3, lam=3.0, beta=0.7)
    elr.target_estimates[3] = OLD_TARGETS[1].float()
    term = elr.loss_terms(_ctx(LOGITS.float(), torch.tensor([0, 3])))["elr"]
    assert term.item() == pytest.approx(3.0 * REGULARISER, rel=1e-5)
    torch.testing.assert_close(elr.target_estimates[[0, 3]], NEW_TARGETS.float())
    assert torch.equal(elr.target_estimates[[1, 2, 4]], torch.zeros(3, 3))


def _train(adapter, epochs=3):
    torch.manual_seed(0)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(IndexedDataset(x, y), batch_size=8, shuffle=True, generator=gen)
    history = fit(model, loader, opt, F.cross_entropy, epochs=epochs,
                  adapters=[adapter] if adapter else [], show_progress=False)
    return model, history


def test_zero_strength_trains_exactly_like_plain_cross_entropy():
    with_elr, history = _train(ELR(24, 3, lam=0.0))
    plain, _ = _train(None)
    assert all(torch.equal(a, b) for a, b in zip(with_elr.parameters(), plain.parameters()))
    assert history["loss/elr"] == [0.0, 0.0, 0.0]


def test_state_dict_round_trip():
    elr = ELR(24, 3)
    _, history = _train(elr)
    assert all(v < 0 for v in history["loss/elr"])  # log(1 - <t,p>) < 0 once t is non-zero
    assert (elr.target_estimates.sum(dim=1) > 0).all()  # every sample was visited
    restored = ELR(24, 3)
    restored.load_state_dict(elr.state_dict())
    assert torch.equal(restored.target_estimates, elr.target_estimates)
    state = elr.state_dict()
    state["target_estimates"][0, 0] = 0.5  # the state is a copy, not the live buffer
    assert elr.target_estimates[0, 0] != 0.5
    with pytest.raises(PriorlabError, match="num_samples"):
        ELR(10, 3).load_state_dict(elr.state_dict())


def test_card_registered():
    card = get("elr")
    assert card.seed_id == 3 and card.adapter is ELR and card.reproduction == "p003_elr"
    namespace = {}
    exec(card.usage, namespace)
    assert torch.isfinite(namespace["loss"])


def test_reproduction_smoke():
    from priorlab.reproductions import p003_elr

    claim = p003_elr.CLAIM
    for arm in claim.arms:
        out = p003_elr.run(arm, claim.tiers["smoke"], seed=0)
        for name in (claim.metric, *claim.extra_metrics):
            assert math.isfinite(out.metrics[name]) and 0.0 <= out.metrics[name] <= 1.0
        assert set(claim.curves) <= set(out.curves)
        assert len(out.curves["test_acc"]["y"]) == claim.tiers["smoke"]["epochs"]
    again = p003_elr.run(claim.arms[-1], claim.tiers["smoke"], seed=0)
    assert again.metrics == out.metrics  # deterministic given (arm, cfg, seed)
    with pytest.raises(PriorlabError, match="arm"):
        p003_elr.run("elr_sym60", claim.tiers["smoke"], seed=0)


@pytest.mark.parametrize("call", [
    lambda: elr_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3)),
    lambda: elr_regularizer(torch.zeros(0, 3), torch.zeros(0, 3)),
])
def test_empty_batch_is_refused_not_nan(call):
    # the mean over no sample was NaN; stablemax and co-teaching already refuse it
    with pytest.raises(PriorlabError, match="logits is empty"):
        call()


def test_boolean_labels_are_refused_with_the_argument_named():
    # bool is not floating point, so they passed the check and crashed inside cross_entropy
    with pytest.raises(PriorlabError, match="labels must have dtype integer, got bool"):
        elr_loss(torch.zeros(2, 3), torch.tensor([True, False]), torch.zeros(2, 3))


def test_int32_labels_work_and_complex_target_estimates_are_refused():
    logits, targets = torch.zeros(2, 3), torch.zeros(2, 3)
    expected = elr_loss(logits, torch.tensor([0, 1]), targets)
    torch.testing.assert_close(elr_loss(logits, torch.tensor([0, 1], dtype=torch.int32), targets),
                               expected)  # cross_entropy alone refuses int32 targets
    with pytest.raises(PriorlabError, match="target_estimates must have dtype float"):
        elr_regularizer(logits, targets.to(torch.complex64))
