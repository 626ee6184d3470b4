"""Label-noise injection: rates, masks, determinism, mappings, bad input."""

import math

import numpy as np
import pytest
import torch

from priorlab.data.noise import ASYMMETRIC_MAPPINGS, asymmetric_noise, symmetric_noise
from priorlab.errors import PriorlabError

LABELS = torch.arange(10).repeat(1000)  # 10,000 labels, 1,000 per class


@pytest.mark.parametrize("rate", [0.4, 0.8])
def test_symmetric_rate_counts_resampling_to_the_true_class(rate):
    noisy, mask = symmetric_noise(LABELS, rate, 10, seed=0)
    # ceil(rate * N) samples are resampled over all 10 classes: 1 in 10 keeps its label
    expected = rate * 0.9
    sd = math.sqrt(rate * 10_000 * 0.1 * 0.9) / 10_000
    assert abs(float(mask.float().mean()) - expected) < 4 * sd
    assert torch.equal(mask, noisy != LABELS)
    assert noisy.dtype == torch.int64 and mask.dtype == torch.bool
    assert noisy.min() >= 0 and noisy.max() <= 9


def test_symmetric_deterministic_by_seed_and_input_untouched():
    labels = LABELS.clone()
    a, mask_a = symmetric_noise(labels, 0.4, 10, seed=3)
    b, mask_b = symmetric_noise(labels.numpy(), 0.4, 10, seed=3)
    c, _ = symmetric_noise(labels, 0.4, 10, seed=4)
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(a, c)
    assert torch.equal(labels, LABELS)


def test_symmetric_extremes():
    noisy, mask = symmetric_noise(LABELS, 0.0, 10, seed=0)
    assert torch.equal(noisy, LABELS) and not mask.any()
    _, mask = symmetric_noise(LABELS, 1.0, 10, seed=0)
    assert 0.88 < float(mask.float().mean()) < 0.92


def test_asymmetric_follows_the_mapping_on_clean_labels():
    mapping = ASYMMETRIC_MAPPINGS["cifar10"]
    noisy, mask = asymmetric_noise(LABELS, 0.4, "cifar10", seed=0)
    assert torch.equal(mask, noisy != LABELS)
    for c in range(10):
        changed = mask[LABELS == c]
        if c in mapping:
            assert int(changed.sum()) == 400  # exactly ceil(0.4 * 1000) per source class
            assert (noisy[(LABELS == c) & mask] == mapping[c]).all()
        else:
            assert not changed.any()
    # the cat<->dog swap flips both directions at the full rate
    assert int(((LABELS == 3) & (noisy == 5)).sum()) == 400
    assert int(((LABELS == 5) & (noisy == 3)).sum()) == 400


def test_asymmetric_custom_mapping_rounds_up_like_the_official_loop():
    labels = np.array([0, 0, 0, 0, 0, 1, 1])
    noisy, mask = asymmetric_noise(labels, 0.5, {0: 1}, seed=0)
    assert int(mask.sum()) == 3  # ceil(0.5 * 5)
    assert torch.equal(noisy[5:], torch.tensor([1, 1]))
    again, _ = asymmetric_noise(labels, 0.5, {0: 1}, seed=0)
    assert torch.equal(noisy, again)


def test_digits_mapping_is_the_standard_one():
    assert ASYMMETRIC_MAPPINGS["mnist"] == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


@pytest.mark.parametrize("call, match", [
    (lambda: symmetric_noise(LABELS, 1.5, 10), "rate"),
    (lambda: symmetric_noise(LABELS, -0.1, 10), "rate"),
    (lambda: symmetric_noise(LABELS, float("nan"), 10), "rate"),
    (lambda: symmetric_noise(LABELS.float(), 0.4, 10), "integers"),
    (lambda: symmetric_noise(LABELS.view(100, 100), 0.4, 10), "1-D"),
    (lambda: symmetric_noise(LABELS, 0.4, 5), "num_classes"),
    (lambda: symmetric_noise(LABELS - 1, 0.4, 10), "non-negative"),
    (lambda: asymmetric_noise(LABELS, 0.4, "cifar-10"), "did you mean"),
    (lambda: asymmetric_noise(LABELS, 0.4, {3: 3}), "itself"),
    (lambda: asymmetric_noise(LABELS, 0.4, {}), "non-empty"),
    (lambda: asymmetric_noise(LABELS, 2, "mnist"), "rate"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(PriorlabError, match=match):
        call()
