"""Expected calibration error and reliability diagrams against hand-computed values."""

import math

import pytest
import torch

from priorlab.diagnostics.calibration import (
    expected_calibration_error,
    reliability_diagram,
)
from priorlab.errors import PriorlabError

# confidences 0.9 (right), 0.8 (wrong), 0.6 (right), 0.7 (right)
PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
TARGETS = torch.tensor([0, 1, 0, 1])


def test_ece_by_hand():
    # 2 bins: all four in (0.5, 1]: accuracy 3/4, confidence (0.9+0.8+0.6+0.7)/4 = 0.75 -> 0
    assert expected_calibration_error(PROBS, TARGETS, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # 4 bins: (0.5, 0.75] holds 0.6, 0.7: acc 1, conf 0.65 -> 2/4 * 0.35
    #         (0.75, 1]   holds 0.9, 0.8: acc 1/2, conf 0.85 -> 2/4 * 0.35
    assert expected_calibration_error(PROBS, TARGETS, n_bins=4) == pytest.approx(0.35)


def test_reliability_diagram_by_hand():
    diagram = reliability_diagram(PROBS, TARGETS, n_bins=4)
    assert diagram.edges == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert diagram.count == [0, 0, 2, 2]
    assert math.isnan(diagram.accuracy[0]) and math.isnan(diagram.confidence[1])
    assert diagram.accuracy[2:] == pytest.approx([1.0, 0.5])
    assert diagram.confidence[2:] == pytest.approx([0.65, 0.85])
    assert diagram.ece == pytest.approx(0.35)


def test_bins_are_closed_on_the_right():
    # confidence exactly 0.5 belongs to (0.25, 0.5], exactly 1.0 to the last bin
    diagram = reliability_diagram(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([0, 0]),
                                  n_bins=4)
    assert diagram.count == [0, 1, 0, 1]
    # bin 1: acc 1 vs conf 0.5 -> 1/2 * 0.5; bin 3: exact -> 0
    assert diagram.ece == pytest.approx(0.25)


def test_extremes_with_default_fifteen_bins():
    onehot = torch.eye(3)
    assert expected_calibration_error(onehot, torch.tensor([0, 1, 2])) == 0.0
    assert expected_calibration_error(onehot, torch.tensor([1, 2, 0])) == pytest.approx(1.0)
    assert len(reliability_diagram(onehot, torch.tensor([0, 1, 2])).count) == 15


def test_logits_give_the_same_answer_as_their_softmax():
    torch.manual_seed(0)
    logits = 3 * torch.randn(50, 5)
    targets = torch.randint(0, 5, (50,))
    from_probs = expected_calibration_error(torch.softmax(logits, dim=1), targets)
    assert expected_calibration_error(logits, targets) == pytest.approx(from_probs)
    assert expected_calibration_error(logits, targets, from_logits=True) == pytest.approx(
        from_probs)
    # probabilities read as logits are softened again: a different (here larger) error
    assert expected_calibration_error(PROBS, TARGETS, 4, from_logits=True) != pytest.approx(0.35)


def test_ece_tracks_overconfidence():
    torch.manual_seed(1)
    logits = torch.randn(2000, 10)
    targets = torch.distributions.Categorical(logits=logits).sample()  # calibrated by design
    calibrated = expected_calibration_error(logits, targets)
    overconfident = expected_calibration_error(4 * logits, targets)
    assert calibrated < 0.03 < overconfident


def test_plot_returns_a_figure():
    fig = reliability_diagram(PROBS, TARGETS, n_bins=4).plot()
    assert len(fig.axes) == 1 and "ECE" in fig.axes[0].get_title()


@pytest.mark.parametrize("call", [
    lambda: expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([0])),
    lambda: expected_calibration_error(torch.tensor([[float("nan"), 1.0]]), torch.tensor([0])),
    lambda: expected_calibration_error(PROBS, TARGETS.float()),
    lambda: expected_calibration_error(PROBS, TARGETS[:3]),
    lambda: expected_calibration_error(PROBS, torch.tensor([0, 1, 2, 0])),
    lambda: expected_calibration_error(PROBS, TARGETS, n_bins=0),
    lambda: expected_calibration_error(torch.tensor([[2.0, -1.0]]), torch.tensor([0]),
                                       from_logits=False),
    lambda: expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
    lambda: expected_calibration_error(torch.tensor([[1, 0]]), torch.tensor([0])),
])
def test_bad_input_raises(call):
    with pytest.raises(PriorlabError):
        call()
