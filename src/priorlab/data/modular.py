"""Modular arithmetic, the standard grokking task, generated in memory.

Every pair ``(a, b)`` with ``0 <= a, b < p`` is one sample; the label is ``(a + b) mod p``. As in
the official code of Prieto et al. (arXiv:2501.04697, ``datasets.py``), the input is the
concatenation of the one-hot codes of ``a`` and ``b`` (dimension ``2p``) and a seeded random
``train_fraction`` of the ``p**2`` pairs is the training set, the rest the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from priorlab.errors import PriorlabError


@dataclass
class ModularData:
    p: int
    train_inputs: torch.Tensor  # (n_train, 2p) concatenated one-hots
    train_targets: torch.Tensor  # (n_train,) int64
    test_inputs: torch.Tensor
    test_targets: torch.Tensor
    train_pairs: torch.Tensor  # (n_train, 2) the (a, b) behind each training row
    test_pairs: torch.Tensor


def modular_addition(p: int, train_fraction: float = 0.4, seed: int = 0, *,
                     dtype: torch.dtype = torch.float32) -> ModularData:
    """All ``p**2`` pairs of ``(a + b) mod p``, one-hot encoded, split at random (seeded).

    The training set holds ``int(train_fraction * p**2)`` pairs, as the official split does.
    """
    if isinstance(p, bool) or not isinstance(p, int) or p < 2:
        raise PriorlabError(f"p must be an integer >= 2 (the paper uses 113), got {p!r}")
    if not isinstance(train_fraction, (int, float)) or not 0 < train_fraction < 1:
        raise PriorlabError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise PriorlabError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    n_train = int(train_fraction * p * p)
    if n_train < 1 or n_train >= p * p:
        raise PriorlabError(f"train_fraction={train_fraction} leaves an empty train or test set for "
                            f"p={p}; choose a fraction between 1/p^2 and 1 - 1/p^2")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    pairs = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    labels = (pairs[:, 0] + pairs[:, 1]) % p
    inputs = torch.zeros(p * p, 2 * p, dtype=dtype)
    rows = torch.arange(p * p)
    inputs[rows, pairs[:, 0]] = 1
    inputs[rows, p + pairs[:, 1]] = 1
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    train, test = order[:n_train], order[n_train:]
    return ModularData(p=p, train_inputs=inputs[train], train_targets=labels[train],
                       test_inputs=inputs[test], test_targets=labels[test],
                       train_pairs=pairs[train], test_pairs=pairs[test])
