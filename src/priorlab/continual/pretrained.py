"""A small ViT pretrained here on some classes, the stand-in for the ImageNet-pretrained encoders
of the rehearsal-free continual-learning papers (20, 8, ...): every arm and every paper with the
same settings shares the same weights per seed (cached per process).
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F

from priorlab.data.images import load_images
from priorlab.nn.attention_vit import AttentionViT
from priorlab.seed import seed_everything
from priorlab.train import fit, shuffled_batches


@lru_cache(maxsize=2)
def _images(dataset: str, n_train, n_val, n_test):
    return load_images(dataset, n_train=n_train, n_val=n_val, n_test=n_test, split_seed=0)


def task_images(cfg: dict):
    """The image dataset the config names (split seed 0), loaded once per process."""
    return _images(cfg["dataset"], cfg["n_train"], cfg["n_val"], cfg["n_test"])


def small_vit(cfg: dict) -> AttentionViT:
    """The 10-way AttentionViT the config describes (image_size, patch_size, dim, depth, heads,
    mlp_dim)."""
    return AttentionViT(10, image_size=cfg["image_size"], patch_size=cfg["patch_size"],
                        dim=cfg["dim"], depth=cfg["depth"], heads=cfg["heads"],
                        mlp_dim=cfg["mlp_dim"])


def epoch_batches(x, y, batch_size: int, generator: torch.Generator):
    """A callable giving one freshly shuffled epoch of ``(x, y)`` batches each time (for fit)."""
    def make():
        for idx in shuffled_batches(len(y), batch_size, generator):
            yield x[idx], y[idx]
    return make


def restricted_cross_entropy(classes):
    """Cross-entropy over ``classes``' logits only (labels are original class ids)."""
    index = torch.tensor(classes)
    remap = torch.full((10,), -1, dtype=torch.long)
    remap[index] = torch.arange(len(classes))
    return lambda logits, y: F.cross_entropy(logits[:, index], remap[y])


def pretrain_key(cfg: dict) -> tuple:
    """The config entries that determine the pretrained encoder (a hashable cache key)."""
    keys = ("dataset", "n_train", "n_val", "n_test", "image_size", "patch_size", "dim", "depth",
            "heads", "mlp_dim", "batch_size", "pretrain_lr", "pretrain_epochs")
    return tuple((k, cfg[k]) for k in keys) + (("classes", tuple(cfg["pretrain_classes"])),)


@lru_cache(maxsize=4)
def pretrained_vit(key: tuple, seed: int) -> dict:
    """The pretrained weights for ``seed`` (shared by every arm and strength in this process)."""
    cfg = dict(key[:-1])
    classes = list(key[-1][1])
    data = task_images(cfg)
    keep = torch.isin(data.y_train, torch.tensor(classes))
    seed_everything(seed)
    model = small_vit(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["pretrain_lr"])
    generator = torch.Generator().manual_seed(seed)
    fit(model, epoch_batches(data.x_train[keep], data.y_train[keep], cfg["batch_size"], generator),
        optimizer, restricted_cross_entropy(classes), epochs=cfg["pretrain_epochs"], show_progress=False)
    return copy.deepcopy(model.state_dict())
