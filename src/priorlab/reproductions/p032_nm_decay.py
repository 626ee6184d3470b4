"""Paper 32, progressive gradient flow: at high N:M sparsity, decayed recipes beat SR-STE.

A small ViT (patch embedding, pre-norm blocks with multi-head attention and a GELU MLP, class
token, linear head) trained from scratch on Fashion-MNIST with AdamW and a cosine schedule. The
attention qkv and the MLP weights of every block are N:M sparse along their input dimension
(the official code's sparse locations FF and QKV; the patch embedding, attention output and head
stay dense). One arm per recipe and ratio: SR-STE (the baseline, lambda_W = 2e-4), MDGF
(exponential mask decay) and SDGF (structure decay 15:16 -> 8:16 -> 4:16 -> 2:16 -> 1:16, or
3:4 -> 2:4) at 1:16 (94% sparse, the paper's high-sparsity regime) and at 2:4 (50%, where the
paper finds the recipes comparable). All arms of a seed share data, order, initialisation,
epochs and optimiser; no recipe is tuned (each keeps its official default, MDGF's decay rate
scaled to our shorter run, see the setting). The metric is the test accuracy of the model as
deployed: eval mode, binary masks at the target N:M (checked), after the last epoch.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import load_images
from priorlab.errors import PriorlabError, did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, RunOutput, Untested
from priorlab.seed import seed_everything
from priorlab.sparsity.nm import MDGF, SDGF, SRSTE, NMSparsityStep, apply_nm_sparsity, is_nm_sparse, nm_layers
from priorlab.train import SchedulerStep, accuracy, fit

# arm -> (recipe, n, m)
ARMS = {"srste_1of16": ("srste", 1, 16), "mdgf_1of16": ("mdgf", 1, 16), "sdgf_1of16": ("sdgf", 1, 16),
        "srste_2of4": ("srste", 2, 4), "mdgf_2of4": ("mdgf", 2, 4)}


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A ViT for 1-channel images: non-overlapping patches, class token, learned positions."""

    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 mlp_ratio: int, num_classes: int):
        super().__init__()
        self.patch = patch
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Linear(patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, images):
        p = self.patch
        patches = images.unfold(2, p, p).unfold(3, p, p).flatten(2, 3).flatten(-2)  # (B, 1, T, p*p)
        x = self.patch_embed(patches.squeeze(1))
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


# lr 3e-3 chosen over 1e-3 in a one-seed pilot by the mean accuracy over all arms (at 1e-3
# every arm was under-trained: 1:16 training accuracy ~0.77)
_COMMON = {"batch_size": 64, "n_curve": 2000, "lr": 3e-3, "weight_decay": 0.05, "srste_lambda": 2e-4,
           "mdgf_decay": "exp",
           # MDGF's decay rate per step is this / total steps: the official default 2e-4 per step
           # times the 78,200 steps of the official CIFAR-10 ViT config (100 epochs, batch 64),
           # so beta falls below 0.01 after the same 30% of training as there
           "mdgf_rate_per_run": 2e-4 * 78_200,
           "sparse_locations": ["qkv", "mlp"]}

CLAUSE_HIGH = "at high N:M sparsity (1:16) mask decay (MDGF) beats SR-STE"
CLAUSE_HIGH_SD = "at high N:M sparsity (1:16) structure decay (SDGF) beats SR-STE"
CLAUSE_LOW = "at low sparsity (2:4) the decayed recipes match SR-STE"
CLAUSE_LM = "the gain holds for language models (up to 5%) and large vision transformers"
CLAUSE_FLOPS = "at equal training FLOPs the decayed recipes still win"

CLAIM = Claim(
    seed_id=32,
    method="nm-decay",
    statement=("At high N:M sparsity, restricting the gradient flow to pruned weights "
               "progressively (mask decay MDGF, structure decay SDGF) gives higher accuracy than "
               "SR-STE, while at low sparsity (2:4) the recipes are comparable; the gains hold for "
               "vision and language transformers and at equal training FLOPs."),
    setting={
        "smoke": ("sklearn digits (8x8), 512 training images, TinyViT (patch 2, dim 32, 1 block), "
                  "4 epochs; checks that the pipeline runs."),
        "full": ("Fashion-MNIST: 5,000 training images (a fixed random subset), the official "
                 "10,000 test images. TinyViT: 7x7 patches (16 tokens + class token), width 64, "
                 "2 pre-norm blocks, 4 heads, MLP 256; qkv and both MLP weights of each block are "
                 "N:M sparse (88% of the linear weights). AdamW lr 3e-3 (picked over 1e-3 on a "
                 "one-seed pilot by the mean accuracy of all arms, per-arm results in view), "
                 "weight decay 0.05, batch "
                 "64, cosine to 0, 6 epochs (474 steps). SR-STE lambda_W = 2e-4 (official). MDGF "
                 "exponential, beta(t) = exp(-rate t) with rate = 2e-4 x 78,200 / 474 per step: "
                 "the official default coefficient rescaled from the official ViT CIFAR-10 config's "
                 "78,200 steps to ours (beta < 0.01 after 30% of the run in both). SDGF: equal "
                 "intervals of each pattern over all steps (no dense or fine-tune phase, the "
                 "official defaults). The test-accuracy curve uses the first 2,000 test images. "
                 "The paper trains ViT-B/Swin on ImageNet and T5/decoder LMs."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # min_effect 0.003 (30 of 10,000 test images): a gain smaller than that is within the
    # seed-to-seed spread of a small ViT and would not justify a new recipe; the paper reports
    # up to 2% at 1:16-1:32. margin 0.003 for "comparable" at 2:4: the same step, the other way.
    comparisons=(
        Comparison(method="mdgf_1of16", baseline="srste_1of16", kind="superiority",
                   min_effect=0.003, clause=CLAUSE_HIGH),
        Comparison(method="sdgf_1of16", baseline="srste_1of16", kind="superiority",
                   min_effect=0.003, clause=CLAUSE_HIGH_SD),
        Comparison(method="mdgf_2of4", baseline="srste_2of4", kind="non-inferiority",
                   margin=0.003, clause=CLAUSE_LOW),
    ),
    clauses=(CLAUSE_HIGH, CLAUSE_HIGH_SD, CLAUSE_LOW, CLAUSE_LM, CLAUSE_FLOPS),
    untested=(
        Untested(CLAUSE_LM, "CPU budget: a 2-block ViT on Fashion-MNIST stands in for ViT-B, Swin "
                            "and the T5/decoder language models"),
        Untested(CLAUSE_FLOPS, "every arm here trains the same steps on the same dense compute; "
                               "the paper's iso-FLOP comparison counts sparse-phase FLOPs, which "
                               "our CPU kernels do not save"),
    ),
    budget=Budget("steps", ours=474, paper=78_200,
                  note="the official repository's ViT config (CIFAR-10, 100 epochs at batch 64) "
                       "takes 78,200 optimiser steps; its ImageNet runs take more. Ours: 6 epochs "
                       "of 5,000 Fashion-MNIST images at batch 64"),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "n_train": 512, "patch": 2, "dim": 32, "depth": 1,
                  "heads": 2, "mlp_ratio": 4, "epochs": 4},
        "full": {**_COMMON, "dataset": "fashion-mnist", "n_train": 5_000, "patch": 7, "dim": 64,
                 "depth": 2, "heads": 4, "mlp_ratio": 4, "epochs": 6},
    },
    seeds={"smoke": 1, "full": 5},
    paper_value=("ViT/Swin on ImageNet and T5 / decoder LMs: up to +2% top-1 (vision) and +5% "
                 "(language) over SR-STE at high sparsity (1:16, 1:32 and beyond); comparable at 2:4."),
    tier_arms={"smoke": ("srste_1of16", "mdgf_1of16", "sdgf_1of16")},
    curves=("test_acc",),
    extra_metrics=("train_acc", "sparsity"),
)


@lru_cache(maxsize=2)
def _data(dataset: str, n_train: int):
    data = load_images(dataset, n_train=n_train, n_val=0, split_seed=0)
    return data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, data.x_train.shape[-1]


def _recipe(name: str, cfg: dict, total_steps: int):
    if name == "srste":
        return SRSTE(lambda_w=cfg["srste_lambda"])
    if name == "mdgf":
        return MDGF(decay=cfg["mdgf_decay"], rate=cfg["mdgf_rate_per_run"] / total_steps)
    return SDGF(total_steps=total_steps)


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    recipe_name, n, m = ARMS[arm]
    x_train, y_train, x_test, y_test, num_classes, size = _data(cfg["dataset"], cfg["n_train"])
    seed_everything(seed)
    model = TinyViT(size, cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"],
                    num_classes)
    n_batches = math.ceil(len(y_train) / cfg["batch_size"])
    total_steps = cfg["epochs"] * n_batches
    apply_nm_sparsity(model, n, m, _recipe(recipe_name, cfg, total_steps), include=cfg["sparse_locations"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    adapters = [NMSparsityStep(),
                SchedulerStep(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps))]
    order = torch.Generator().manual_seed(seed)

    def batches():
        perm = torch.randperm(len(y_train), generator=order)
        for start in range(0, len(y_train), cfg["batch_size"]):
            idx = perm[start:start + cfg["batch_size"]]
            yield x_train[idx], y_train[idx]

    history = fit(model, batches, optimizer, F.cross_entropy, epochs=cfg["epochs"], adapters=adapters,
                  # the curve on a fixed subset of the test images keeps evaluation cheap
                  evaluate=lambda mdl: {"test_acc": accuracy(mdl, x_test[:cfg["n_curve"]],
                                                             y_test[:cfg["n_curve"]])},
                  eval_every=2, show_progress=False)
    model.eval()
    layers = nm_layers(model)
    sparse = [model.get_submodule(name).weight for name in layers]
    linear_weights = sum(mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    zeros = sum(int((w == 0).sum()) for w in sparse)
    # the deployed model must be exactly N:M, or the accuracy is not that of an N:M model
    if not all(is_nm_sparse(w, n, m) for w in sparse) or any(layer.pattern() != (n, m)
                                                             for layer in layers.values()):
        raise PriorlabError(f"{arm}: the final eval-mode weights are not {n}:{m} sparse")
    metrics = {"test_acc": accuracy(model, x_test, y_test), "train_acc": accuracy(model, x_train, y_train),
               "sparsity": zeros / linear_weights}
    curves = {"test_acc": {"x": [float(e) for e in history["epoch"]], "y": history["test_acc"]}}
    info = {"recipe": recipe_name, "n": n, "m": m, "total_steps": total_steps, "sparse_layers": list(layers),
            "final_train_loss": history["loss/task"][-1]}
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={"test_acc": 1 / len(y_test), "train_acc": 1 / len(y_train)})
