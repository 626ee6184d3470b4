"""PS-KD (seed 16): schedule, targets and loss by hand; adapter against the official loop."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.functional.pskd import (
    pskd_alpha,
    pskd_loss,
    pskd_targets,
    soft_cross_entropy,
)
from priorlab.hooks import StepContext
from priorlab.methods.pskd import PSKD
from priorlab.train import fit



def test_alpha_schedule_is_official():
    assert pskd_alpha(0, 300) == pytest.approx(0.8 / 300)  # alpha_T * (epoch + 1) / T
    assert pskd_alpha(149, 300) == pytest.approx(0.4)
    assert pskd_alpha(299, 300) == pytest.approx(0.8)
    assert pskd_alpha(400, 300) == pytest.approx(0.8)  # held after the schedule
    assert pskd_alpha(4, 10, alpha_T=0.0) == 0.0


def test_targets_by_hand():
    past = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    got = pskd_targets(torch.tensor([0, 1]), past, alpha=0.4)
    expected = torch.tensor([[0.6 + 0.2, 0.1, 0.1], [0.04, 0.6 + 0.04, 0.32]])
    torch.testing.assert_close(got, expected)


def test_soft_cross_entropy_by_hand():
    # softmax([ln 2, 0, 0]) = [1/2, 1/4, 1/4]
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]], dtype=torch.float64)
    # row 0: -(.5 ln .5 + .5 ln .25) = 1.5 ln 2; row 1: ln 3 whatever the target
    expected = (1.5 * math.log(2.0) + math.log(3.0)) / 2
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_label_ce_and_past_ce_mixed():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 4), torch.randint(0, 4, (5,))
    past = torch.softmax(torch.randn(5, 4), dim=1)
    mixed = pskd_loss(logits, labels, past, alpha=0.3)
    by_parts = 0.7 * F.cross_entropy(logits, labels) + 0.3 * soft_cross_entropy(logits, past)
    assert mixed.item() == pytest.approx(by_parts.item(), rel=1e-6)
    assert pskd_loss(logits, labels, past, 0.0).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_past_predictions_carry_no_gradient():
    logits = torch.zeros(1, 3, requires_grad=True)
    past = torch.tensor([[0.2, 0.3, 0.5]], requires_grad=True)
    pskd_loss(logits, torch.tensor([0]), past, 0.5).backward()
    assert past.grad is None and torch.isfinite(logits.grad).all()


def _ctx(logits, labels, indices):
    return StepContext(model=None, optimizer=None, outputs=logits, targets=labels,
                       indices=indices)


def test_adapter_term_by_hand():
    adapter = PSKD(num_samples=2, num_classes=3, total_epochs=4)
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    # epoch 0: the previous prediction is the label itself, so the term vanishes
    term = adapter.loss_terms(_ctx(logits, labels, torch.tensor([0, 1])))["pskd"]
    assert term.item() == 0.0
    torch.testing.assert_close(adapter.predictions[0], torch.tensor([0.5, 0.25, 0.25]))
    adapter.on_epoch_end(None)
    assert adapter.alpha == pytest.approx(0.8 * 2 / 4)
    # epoch 1, same logits: alpha * (H(p_prev, q) - CE(y, q)); row 1 both ln 3 -> 0
    term = adapter.loss_terms(_ctx(logits, labels, torch.tensor([0, 1])))["pskd"]
    expected = 0.4 * (1.5 * math.log(2.0) - math.log(2.0)) / 2
    assert term.item() == pytest.approx(expected, rel=1e-6)


def _official_loop(model, x, y, order, epochs, alpha_T, lr):
    """PS-KD as the official main.py trains: a prediction buffer, one-hot in epoch 0."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    buffer = torch.zeros(len(y), 3)
    for epoch in range(epochs):
        alpha = alpha_T * (epoch + 1) / epochs
        for idx in order:
            if epoch == 0:
                buffer[idx] = F.one_hot(y[idx], 3).float()
            targets = (1 - alpha) * F.one_hot(y[idx], 3).float() + alpha * buffer[idx]
            logits = model(x[idx])
            loss = (-targets * F.log_softmax(logits, dim=1)).mean(0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            buffer[idx] = F.softmax(logits.detach(), dim=1)
    return model


def test_adapter_in_fit_trains_like_the_official_loop():
    torch.manual_seed(0)
    x, y = torch.randn(24, 5), torch.randint(0, 3, (24,))
    order = [torch.arange(0, 8), torch.arange(8, 16), torch.arange(16, 24)]
    torch.manual_seed(1)
    reference = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    ours = copy.deepcopy(reference)
    _official_loop(reference, x, y, order, epochs=4, alpha_T=0.8, lr=0.2)
    opt = torch.optim.SGD(ours.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    adapter = PSKD(num_samples=24, num_classes=3, total_epochs=4)
    history = fit(ours, [(x[i], y[i], i) for i in order], opt, F.cross_entropy, epochs=4,
                  adapters=[adapter], show_progress=False)
    for a, b in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert history["loss/pskd"][0] == 0.0 and history["loss/pskd"][-1] != 0.0
    assert adapter.epochs_done == 4 and bool(adapter.seen.all())


def test_state_dict_round_trip():
    adapter = PSKD(num_samples=3, num_classes=2, total_epochs=5)
    adapter.loss_terms(_ctx(torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]),
                            torch.tensor([2, 0])))
    adapter.on_epoch_end(None)
    restored = PSKD(num_samples=3, num_classes=2, total_epochs=5)
    restored.load_state_dict(adapter.state_dict())
    assert torch.equal(restored.predictions, adapter.predictions)
    assert restored.seen.tolist() == [True, False, True] and restored.epochs_done == 1
    with pytest.raises(PriorlabError):
        PSKD(num_samples=4, num_classes=2, total_epochs=5).load_state_dict(adapter.state_dict())


@pytest.mark.parametrize("call", [
    lambda: PSKD(0, 3, 10),
    lambda: PSKD(4, 1, 10),
    lambda: PSKD(4, 3, 0),
    lambda: PSKD(4, 3, 10, alpha_T=-0.1),
    lambda: PSKD(4, 3, 10, alpha_T=True),
    lambda: PSKD(4, 3, 10).loss_terms(_ctx(torch.zeros(2, 3), torch.tensor([0, 1]), None)),
    lambda: PSKD(4, 3, 10).loss_terms(_ctx(torch.zeros(2, 3), torch.tensor([0, 1]),
                                           torch.tensor([0, 4]))),
    lambda: PSKD(4, 3, 10).loss_terms(_ctx(torch.zeros(2, 2), torch.tensor([0, 1]),
                                           torch.tensor([0, 1]))),
    lambda: PSKD(4, 3, 10).loss_terms(_ctx(torch.zeros(2, 3), torch.tensor([0.0, 1.0]),
                                           torch.tensor([0, 1]))),
    lambda: pskd_alpha(-1, 10),
    lambda: pskd_alpha(0, 0),
    lambda: pskd_targets(torch.tensor([0, 3]), torch.full((2, 3), 1 / 3), 0.5),
    lambda: pskd_targets(torch.tensor([0, 1]), torch.full((2, 3), 0.5), 0.5),
    lambda: pskd_loss(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]),
                      torch.tensor([[0.5, 0.5]]), 0.5),
    lambda: soft_cross_entropy(torch.zeros(2, 3), torch.full((2, 2), 0.5)),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()


def test_reproduction_smoke_every_arm():
    from priorlab.reproductions.p016_pskd import CLAIM, run
    expected = {CLAIM.metric, *CLAIM.extra_metrics, *(g.metric for g in CLAIM.guards)}
    for arm in CLAIM.arms:
        out = run(arm, CLAIM.tiers["smoke"], seed=0)
        assert set(out.metrics) == expected, arm
        assert all(math.isfinite(v) for v in out.metrics.values()), arm
        assert 0.0 <= out.metrics["test_ece"] <= 1.0
        assert len(out.curves["test_ece"]["x"]) == len(out.curves["test_ece"]["y"]) > 0
    assert CLAIM.guards[0].metric == "test_acc" and not CLAIM.higher_is_better


@pytest.mark.parametrize("call", [
    lambda: pskd_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.zeros(0, 3), 0.5),
    lambda: soft_cross_entropy(torch.zeros(0, 3), torch.zeros(0, 3)),
])
def test_empty_batch_is_refused_not_nan(call):
    # the mean over no sample was NaN; stablemax and co-teaching already refuse it
    with pytest.raises(PriorlabError, match="logits is empty"):
        call()
