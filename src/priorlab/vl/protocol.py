"""The base-to-novel protocol on the stand-in, shared by the CLIP-family reproductions (26, 19, ...).

Fashion-MNIST split by document seed 0: a pool for pre-training the stand-in, a disjoint pool
for few-shot prompt learning, held-out base-class validation images (the only images any
hyperparameter is selected on) and the base / novel test halves, all optionally shown through a
domain shift.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.vl.standin import FASHION_CLASSES, PromptedStandIn, base_novel_split


# the downstream domain: the pre-training images as they are, or upside down (a domain gap that
# the prompts have to bridge, as CLIP's downstream datasets differ from its web images)
SHIFTS = {"none": lambda x: x, "flip": lambda x: x.flip(2)}


@lru_cache(maxsize=2)
def base_to_novel_data(n_pretrain: int, n_val: int, n_test: int, shift: str):
    """``(pretrain pool, few-shot pool, base validation, {"base", "novel"} test halves, base
    classes, novel classes)``; test labels are re-indexed within each half."""
    if shift not in SHIFTS:
        raise did_you_mean(shift, SHIFTS, "shift")
    data = load_images("fashion-mnist", split_seed=0)
    base, novel = base_novel_split(len(FASHION_CLASSES))
    pool_x, pool_y = data.x_train[:n_pretrain], data.y_train[:n_pretrain]
    move = SHIFTS[shift]
    shots_x, shots_y = move(data.x_train[n_pretrain:]), data.y_train[n_pretrain:]
    is_base = torch.isin(data.y_val, torch.tensor(base))
    val = (move(data.x_val[is_base][:n_val]), data.y_val[is_base][:n_val])
    halves = {}
    for name, classes in (("base", base), ("novel", novel)):
        keep = torch.isin(data.y_test, torch.tensor(classes))
        halves[name] = (move(data.x_test[keep][:n_test]), data.y_test[keep][:n_test] - classes[0])
    return (pool_x, pool_y), (shots_x, shots_y), val, halves, base, novel


def few_shot(x: torch.Tensor, y: torch.Tensor, classes, shots: int, seed: int):
    """``shots`` seeded examples of each class in ``classes``."""
    generator = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()),
                                                                     generator=generator)[:shots]]
                     for c in classes])
    return x[idx], y[idx]


@torch.no_grad()
def prompted_accuracy(model: PromptedStandIn, x: torch.Tensor, y: torch.Tensor, names) -> float:
    """Zero-shot-style accuracy of a prompted stand-in over the classes ``names``."""
    text = model.text_features(names)
    correct = sum((model.image_features(x[i:i + 1000]) @ text.T).argmax(1).eq(y[i:i + 1000]).sum().item()
                  for i in range(0, len(y), 1000))
    return correct / len(y)


@torch.no_grad()
def encoder_accuracy(encoder, x: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> float:
    """Accuracy of an image ``encoder`` classifying by cosine to fixed class ``text`` features
    (the masked or LoRA-tuned encoders of 19 and 18, with "a photo of a {name}." prompts)."""
    correct = sum((encoder(x[i:i + 1000]) @ text.T).argmax(1).eq(y[i:i + 1000]).sum().item()
                  for i in range(0, len(y), 1000))
    return correct / len(y)
