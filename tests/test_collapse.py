"""Softmax Collapse monitor (Prieto et al., arXiv:2501.04697): known cases worked out by hand."""

import pytest
import torch
import torch.nn.functional as F

from priorlab.diagnostics.collapse import (
    softmax_collapse_fraction,
    softmax_collapse_mask,
)
from priorlab.errors import PriorlabError


def test_collapses_in_float32_but_not_in_float64():
    # exp(-20) = 2.1e-9 is below float32's half-ulp at 1 (6e-8), so 1 + exp(-20) rounds to 1 in
    # float32 but not in float64.
    logits = torch.tensor([[0.0, -20.0]])
    targets = torch.tensor([0])
    assert softmax_collapse_fraction(logits, targets) == 1.0
    assert softmax_collapse_fraction(logits, targets, dtype=torch.float64) == 0.0


def test_collapse_means_zero_loss_and_zero_true_class_gradient_in_torch():
    targets = torch.tensor([0])
    grads = {}
    for dtype in (torch.float32, torch.float64):
        logits = torch.tensor([[0.0, -20.0]], dtype=dtype, requires_grad=True)
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        grads[dtype] = (loss.item(), logits.grad[0, 0].item())
    assert grads[torch.float32] == (0.0, 0.0)  # collapsed: nothing left to learn from
    assert grads[torch.float64][0] > 0 and grads[torch.float64][1] < 0


def test_float16_collapses_earlier_than_float32():
    # exp(-10) = 4.5e-5: absorbed by float16 (half-ulp 4.9e-4) but not by float32.
    logits = torch.tensor([[0.0, -10.0]])
    targets = torch.tensor([0])
    assert softmax_collapse_fraction(logits, targets) == 0.0
    assert softmax_collapse_fraction(logits, targets, dtype=torch.float16) == 1.0


def test_mask_needs_the_true_class_on_top_and_no_tie():
    logits = torch.tensor([[0.0, -30.0, -40.0],   # collapsed at the true class
                           [-30.0, 0.0, -40.0],   # one-hot, but at the wrong class
                           [5.0, 5.0, -40.0],     # tie at the top: Softmax is 1/2, 1/2
                           [1.0, 0.0, -1.0]])     # ordinary confident sample
    targets = torch.tensor([0, 0, 0, 0])
    assert softmax_collapse_mask(logits, targets).tolist() == [True, False, False, False]
    assert softmax_collapse_fraction(logits, targets) == 0.25


def test_collapse_is_shift_invariant_like_softmax():
    logits = torch.tensor([[0.0, -20.0], [0.0, -1.0]])
    targets = torch.tensor([0, 0])
    shifted = logits + 1000.0
    assert softmax_collapse_mask(shifted, targets).tolist() == [True, False]


@pytest.mark.parametrize("bad", [
    lambda: softmax_collapse_fraction(torch.tensor([[1, 0]]), torch.tensor([0])),
    lambda: softmax_collapse_fraction(torch.zeros(3), torch.tensor([0])),
    lambda: softmax_collapse_fraction(torch.zeros(2, 3), torch.tensor([0.0, 1.0])),
    lambda: softmax_collapse_fraction(torch.zeros(2, 3), torch.tensor([0])),
    lambda: softmax_collapse_fraction(torch.zeros(2, 3), torch.tensor([0, 3])),
    lambda: softmax_collapse_fraction(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)),
    lambda: softmax_collapse_fraction(torch.zeros(2, 3), torch.tensor([0, 1]), dtype=torch.int32),
])
def test_bad_input_raises(bad):
    with pytest.raises(PriorlabError):
        bad()
