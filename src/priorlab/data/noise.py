"""Label-noise injection as the ELR code defines it (shengliu66/ELR, ELR/data_loader/cifar10.py),
plus the Nested-Co-teaching symmetric generator.

All functions return ``(noisy_labels, noise_mask)`` as torch tensors (int64, bool), where
``noise_mask`` marks the samples whose label *actually changed*. They are deterministic given
``seed`` and never modify their input.

- :func:`symmetric_noise`: ``ceil(rate * N)`` samples chosen at random get a label drawn
  uniformly from *all* ``num_classes`` classes, the true one included (as in the official code).
  The fraction of wrong labels is therefore about ``rate * (1 - 1/num_classes)``: 40% symmetric
  noise on 10 classes corrupts ~36% of the labels, 80% corrupts ~72%.
- :func:`asymmetric_noise`: within each source class of a mapping, ``ceil(rate * n_class)``
  samples are relabelled to the mapped class (class-dependent, "realistic" confusions).
- :func:`symmetric_flip_noise`: the Nested-Co-teaching generator
  (yingyichen-cyy/Nested-Co-teaching, ``data/preprocess_sym_noise_cifar.py``): within each class,
  ``ceil(rate * n_class)`` samples get a label drawn uniformly from the *other* classes, so
  exactly those samples are wrong and the wrong-label fraction is ``rate`` (up to rounding).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from priorlab.errors import PriorlabError, did_you_mean

# CIFAR-10 (official ELR code): truck->automobile, bird->airplane, cat<->dog, deer->horse.
# MNIST / digits: the standard mapping of Patrini et al. 2017 (also used by D2L, GCE, NCE):
# 2->7, 3->8, 5<->6, 7->1.
ASYMMETRIC_MAPPINGS: dict[str, dict[int, int]] = {
    "cifar10": {9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
    "digits": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
}


def _labels_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise PriorlabError(f"labels must be integers, got a {labels.dtype} tensor; "
                                "pass class indices (e.g. labels.long())")
        arr = labels.detach().cpu().numpy()
    else:
        arr = np.asarray(labels)
        if arr.dtype.kind not in "iu":
            raise PriorlabError(f"labels must be integers, got dtype {arr.dtype}; "
                                "pass class indices")
    if arr.ndim != 1:
        raise PriorlabError(f"labels must be 1-D (one class index per sample), got shape "
                            f"{arr.shape}")
    if arr.size and arr.min() < 0:
        raise PriorlabError(f"labels must be non-negative class indices, got {int(arr.min())}")
    return arr.astype(np.int64)


def _check_rate(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise PriorlabError(f"noise rate must be a number in [0, 1], got {rate!r}")
    return float(rate)


def _check_num_classes(num_classes: int, clean: np.ndarray) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise PriorlabError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if clean.size and clean.max() >= num_classes:
        raise PriorlabError(f"labels go up to {int(clean.max())} but num_classes is {num_classes}; "
                            "pass the dataset's number of classes")


def _n_selected(rate: float, n: int) -> int:
    # the official loop flips sample i of a random order while i < rate * n
    return min(n, math.ceil(rate * n))


def _result(clean: np.ndarray, noisy: np.ndarray):
    return torch.from_numpy(noisy), torch.from_numpy(noisy != clean)


def symmetric_noise(labels, rate: float, num_classes: int, seed: int = 0):
    """Resample the labels of ``ceil(rate * N)`` random samples uniformly over all classes.

    The true class can be drawn again, so the fraction of wrong labels is about
    ``rate * (1 - 1 / num_classes)``; ``noise_mask`` marks exactly the changed ones.
    """
    clean = _labels_array(labels)
    rate = _check_rate(rate)
    _check_num_classes(num_classes, clean)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(clean.size)[:_n_selected(rate, clean.size)]
    noisy = clean.copy()
    noisy[chosen] = rng.integers(0, num_classes, size=chosen.size)
    return _result(clean, noisy)


def symmetric_flip_noise(labels, rate: float, num_classes: int, seed: int = 0):
    """Flip ``ceil(rate * n_c)`` random samples of each class ``c`` to a uniformly drawn other class.

    Unlike :func:`symmetric_noise`, a flipped label never equals the true one, so every selected
    sample is corrupted and ``noise_mask`` marks exactly the selected samples.
    """
    clean = _labels_array(labels)
    rate = _check_rate(rate)
    _check_num_classes(num_classes, clean)
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    for source in range(num_classes):
        members = np.flatnonzero(clean == source)
        chosen = rng.permutation(members)[:_n_selected(rate, members.size)]
        # a draw from the num_classes - 1 other classes: skip over the true class
        offset = rng.integers(0, num_classes - 1, size=chosen.size)
        noisy[chosen] = offset + (offset >= source)
    return _result(clean, noisy)


def asymmetric_noise(labels, rate: float, mapping: dict[int, int] | str, seed: int = 0):
    """Relabel ``ceil(rate * n_c)`` random samples of each source class ``c`` to ``mapping[c]``.

    ``mapping`` is a dict ``{source: target}`` or a name in :data:`ASYMMETRIC_MAPPINGS`
    (``"cifar10"``, ``"mnist"``, ``"digits"``). Classes not in the mapping keep their labels.
    The mapping applies to the clean labels, so a swap (cat<->dog) flips each direction at
    ``rate``; the official loop relabels in place, class by class, and so partly undoes a swap.
    """
    clean = _labels_array(labels)
    rate = _check_rate(rate)
    if isinstance(mapping, str):
        if mapping not in ASYMMETRIC_MAPPINGS:
            raise did_you_mean(mapping, ASYMMETRIC_MAPPINGS, "asymmetric noise mapping")
        mapping = ASYMMETRIC_MAPPINGS[mapping]
    if not isinstance(mapping, dict) or not mapping:
        raise PriorlabError("mapping must be a non-empty dict {source class: target class} or one "
                            f"of {sorted(ASYMMETRIC_MAPPINGS)}")
    for source, target in mapping.items():
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 0
                   for c in (source, target)):
            raise PriorlabError(f"mapping entries must be non-negative class indices, got "
                                f"{source!r}: {target!r}")
        if source == target:
            raise PriorlabError(f"mapping sends class {source} to itself; drop that entry")
    rng = np.random.default_rng(seed)
    noisy = clean.copy()
    for source in sorted(mapping):
        members = np.flatnonzero(clean == source)
        chosen = rng.permutation(members)[:_n_selected(rate, members.size)]
        noisy[chosen] = mapping[source]
    return _result(clean, noisy)
