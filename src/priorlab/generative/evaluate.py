"""Judging generated digits with a classifier trained here.

- :class:`DigitClassifier` / :func:`pretrained_classifier`: a small CNN trained on real digits
  (cached like the GAN), whose 128-d penultimate layer is the feature space below.
- :func:`class_rates`: the share of samples the classifier assigns to each class (how often a
  GAN still makes a class it should have unlearnt).
- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets,
  ``|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` (Heusel et al. 2017, arXiv 1706.08500).
  Over this classifier's features it is an FID-*like* score: it is NOT Inception FID and its
  values are not comparable with published FIDs.
"""

from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.generative.gan import _atomic_save, _check_size, cache_dir, digit_images
from priorlab.validation import check_number, check_tensor


class DigitClassifier(nn.Module):
    """Two conv blocks, a 128-unit feature layer and a linear head, for (N, 1, S, S) images."""

    def __init__(self, num_classes: int = 10, image_size: int = 16, channels: int = 32,
                 feature_dim: int = 128):
        super().__init__()
        image_size = _check_size(image_size, "DigitClassifier")
        self.image_size = image_size
        pooled = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * pooled * pooled, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "images", who="DigitClassifier", shape=(None, 1, self.image_size, self.image_size),
                     dtype="float")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(x: torch.Tensor, y: torch.Tensor, *, epochs: int = 15, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0) -> DigitClassifier:
    """Adam on cross-entropy, with small random shifts (±1 pixel) so it judges blurry GAN digits
    by shape rather than by exact position."""
    check_tensor(x, "x", who="train_classifier", ndim=4, dtype="float", non_empty=True, finite=True)
    check_tensor(y, "y", who="train_classifier", shape=(len(x),), dtype="integer")
    epochs = check_number(epochs, "epochs", who="train_classifier", low=1, integer=True)
    torch.manual_seed(seed)
    model = DigitClassifier(int(y.max()) + 1, x.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=rng)
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            shift = torch.randint(-1, 2, (2,), generator=rng).tolist()
            batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def pretrained_classifier(*, dataset: str = "digits", image_size: int = 16, epochs: int = 15,
                          seed: int = 0, cache: bool = True) -> tuple[DigitClassifier, dict]:
    """The evaluation classifier trained on ``dataset``'s training split (cached), with its
    accuracy on the validation split in ``info["val_acc"]``."""
    config = {"dataset": dataset, "image_size": image_size, "epochs": epochs, "seed": seed, "v": 1}
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "gan" / f"classifier_{key}.pt"
    x_val, y_val = digit_images(image_size, "val", dataset=dataset)
    if cache and path.exists():
        state = torch.load(path, weights_only=True)
        model = DigitClassifier(state["num_classes"], image_size)
        model.load_state_dict(state["model"])
        model.eval()
    else:
        x, y = digit_images(image_size, "train", dataset=dataset)
        model = train_classifier(x, y, epochs=epochs, seed=seed)
        if cache:
            _atomic_save({"model": model.state_dict(), "num_classes": model.head.out_features}, path)
    with torch.no_grad():
        val_acc = float((model(x_val).argmax(1) == y_val).float().mean())
    return model, {**config, "val_acc": val_acc}


def class_rates(classifier: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Share of ``images`` predicted as each class: a vector summing to 1."""
    check_tensor(images, "images", who="class_rates", ndim=4, dtype="float", non_empty=True, finite=True)
    with torch.no_grad():
        logits = classifier(images)
    return torch.bincount(logits.argmax(1), minlength=logits.shape[1]).double() / len(images)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (float64 inside).

    Tr((C_a C_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the
    symmetric matrix C_a^(1/2) C_b C_a^(1/2), which has the same spectrum.
    """
    for name, f in (("features_a", features_a), ("features_b", features_b)):
        check_tensor(f, name, who="frechet_distance", ndim=2, dtype="float", finite=True)
        if len(f) < 2:
            raise PriorlabError(f"frechet_distance: {name} needs at least 2 rows, got {len(f)}")
    if features_a.shape[1] != features_b.shape[1]:
        raise PriorlabError(f"frechet_distance: feature sizes differ ({features_a.shape[1]} vs "
                            f"{features_b.shape[1]})")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return float(value.clamp(min=0))


def classifier_frechet_distance(classifier: DigitClassifier, generated: torch.Tensor,
                                real: torch.Tensor) -> float:
    """Fréchet distance between ``generated`` and ``real`` images in the classifier's feature
    space (an FID-like score; not Inception FID)."""
    with torch.no_grad():
        return frechet_distance(classifier.features(generated), classifier.features(real))


def image_grid(images: torch.Tensor, columns: int = 8) -> list[list[float]]:
    """Tile (N, 1, H, W) or (N, H, W) images with values in [0, 1] into one 2-D grid (rows of
    ``columns`` images, a 1-pixel white gutter), as nested lists: put it in ``RunOutput.info``
    under a name ending in ``_image`` and the report draws it (seed 0, one panel per arm)."""
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    check_tensor(images, "images", who="image_grid", ndim=3, dtype="float", non_empty=True, finite=True)
    check_number(columns, "columns", who="image_grid", integer=True, low=1)
    n, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(rows * (h + 1) - 1, columns * (w + 1) - 1)
    for i, image in enumerate(images.detach().clamp(0, 1).cpu()):
        r, c = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = image
    return [[round(float(v), 3) for v in row] for row in grid]
