"""Paper 18, GLAD: LoRA with its gradient steered towards the SAM gradient keeps novel-class accuracy.

Base-to-novel generalisation on the vision-language stand-in of :mod:`priorlab.vl`, with the
protocol of the PromptSRC and R-AMT reproductions (:mod:`priorlab.vl.protocol`): a small ViT image
encoder pre-trained here per seed with the CLIP loss against the frozen MiniLM embeddings of
captions of all ten Fashion-MNIST classes (10k images, kept apart from every image used below);
16 shots of each of the five base classes (t-shirt, trouser, pullover, dress, coat) for tuning;
tests on the official test images of the base classes and of the five novel ones (sandal, shirt,
sneaker, bag, ankle boot), each half a 5-way problem with its own class names (CoCoOp's
protocol). Downstream images are shown upside down, a domain gap between pre-training and task.

Arms: ``zero_shot`` (frozen stand-in, "a photo of a {}."), ``lora`` (PEFT LoRA, rank 2, on the
image encoder's query/key/value projections of all blocks, cross-entropy against the frozen
zero-shot text features) and ``glad`` (the same LoRA, same data order and initialisation, with
each step's gradient regularised towards the SAM gradient, :mod:`priorlab.optim.glad`). The
learning rate of both trained arms is chosen from the same grid on held-out base images (never on
novel classes or test images); GLAD's rho and strength are fixed, not tuned.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.optim.glad import apply_lora, regularise_gradients
from priorlab.seed import seed_everything
from priorlab.vl.protocol import base_to_novel_data, encoder_accuracy, few_shot
from priorlab.vl.standin import FASHION_CLASSES, cached_pretrain, harmonic_mean
from priorlab.vl.text import embed_texts

# arm -> does it train, with GLAD's gradient regularisation?
ARMS = {"zero_shot": None, "lora": False, "glad": True}

_COMMON = {"shift": "flip", "n_pretrain": 10_000, "pretrain_epochs": 3, "shots": 16, "batch_size": 16,
           # LoRA (CLIP-LoRA's rank 2, alpha 1, q/k/v), AdamW with a cosine schedule
           "rank": 2, "lora_alpha": 1.0, "weight_decay": 1e-2,
           # GLAD: SAM radius and pull towards the SAM gradient (fixed, see the card)
           "rho": 0.05, "strength": 0.5}

CLAIM = Claim(
    seed_id=18,
    method="glad",
    statement=("LoRA tuning with the task gradient regularised towards the sharpness-aware (SAM) "
               "gradient gives higher novel-class accuracy than plain LoRA of the same rank, "
               "budget and lr grid, at equal base-class accuracy, and a higher base/novel "
               "harmonic mean."),
    setting={
        "smoke": ("stand-in pre-trained on 600 images for 1 epoch, 2 shots per base class, "
                  "2 epochs, 200 test images per half; checks that the pipeline runs."),
        "full": ("Fashion-MNIST, split seed 0, the stand-in and protocol of p026/p019: ViT (patch "
                 "7, width 64, depth 3) + frozen all-MiniLM-L6-v2, CLIP-loss pre-training on 10k "
                 "images of all 10 classes (cached per seed); downstream images upside down. 16 "
                 "shots x 5 base classes, batch 16, 20 epochs (100 steps), AdamW (weight decay "
                 "1e-2) with a cosine schedule. LoRA rank 2, alpha 1 on query/key/value of the 3 "
                 "image blocks (2304 trainable parameters), text features frozen (zero-shot "
                 "prompts). GLAD: rho 0.05, strength 0.5. lr per arm from {3e-3, 1e-2, 3e-2, "
                 "0.1} by base accuracy on 1000 validation images. Test: 5000 official test "
                 "images per half, 5-way each. Paper: CLIP ViT-B/16, LoRA on both encoders, "
                 "11 datasets, 16 shots."),
    },
    metric="novel_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # min_effect 0.01: one point of novel accuracy (50 of 5000 images), well above the resolution
    # and small against the gains the paper reports over LoRA; margin 0.01 on base accuracy =
    # "equal" within one point
    comparisons=(
        Comparison(method="glad", baseline="lora", kind="superiority", min_effect=0.01,
                   clause="higher novel-class accuracy than plain LoRA"),
    ),
    # hm: min_effect 0.005, half the novel bar: at equal base accuracy a one-point novel gain
    # moves the harmonic mean by about half a point
    guards=(
        Guard(metric="hm", higher_is_better=True, kind="superiority", min_effect=0.005,
              clause="higher base/novel harmonic mean than plain LoRA"),
        Guard(metric="base_acc", higher_is_better=True, kind="non-inferiority", margin=0.01,
              clause="at equal base-class accuracy"),
    ),
    clauses=("higher novel-class accuracy than plain LoRA",
             "higher base/novel harmonic mean than plain LoRA",
             "at equal base-class accuracy",
             "plain LoRA already matches state-of-the-art prompt tuning",
             "the gains hold with CLIP on 11 real datasets, in domain and cross-dataset "
             "generalisation"),
    untested=(
        Untested("plain LoRA already matches state-of-the-art prompt tuning",
                 "a side claim; the prompt arms live in p026 and the stand-in barely responds to "
                 "a shared text context, so a cross-reproduction comparison would say little"),
        Untested("the gains hold with CLIP on 11 real datasets, in domain and cross-dataset "
                 "generalisation",
                 "no CLIP weights or those datasets offline: one Fashion-MNIST stand-in"),
    ),
    budget=Budget("steps", ours=100, paper=None,
                  note="optimiser steps of LoRA tuning on 16 shots x 5 base classes; the paper's "
                       "schedule was not retrieved. GLAD costs two forward-backward passes a step, "
                       "as SAM"),
    tiers={
        "smoke": {**_COMMON, "n_pretrain": 600, "pretrain_epochs": 1, "shots": 2, "epochs": 2,
                  "n_val": 100, "n_test": 200, "lr_grid": (1e-2,)},
        "full": {**_COMMON, "epochs": 20, "n_val": 1000, "n_test": 5000,
                 "lr_grid": (3e-3, 1e-2, 3e-2, 1e-1)},
    },
    seeds={"smoke": 1, "full": 5},
    paper_value=("base-to-novel average over 11 datasets: GLAD above plain LoRA on novel accuracy "
                 "and HM (the table's numbers were not retrieved here)"),
    curves=("train_loss",),
    extra_metrics=("base_acc", "hm", "base_val_acc"),
)


def train_lora(standin, regularise: bool, cfg: dict, lr: float, seed: int, shots, text):
    """LoRA on a copy of the stand-in's image encoder; ``regularise`` adds GLAD's gradient
    regularisation. Returns (encoder, per-epoch mean task loss, mean cos(g, g_sam))."""
    seed_everything(seed)  # same LoRA init and batch order for both arms
    encoder = apply_lora(copy.deepcopy(standin.image_encoder).requires_grad_(False), "standin_vit",
                         rank=cfg["rank"], alpha=cfg["lora_alpha"])
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])
    x, y = shots
    steps_per_epoch = -(-len(y) // cfg["batch_size"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["epochs"] * steps_per_epoch)
    order = torch.Generator().manual_seed(seed)
    losses, cosines = [], []
    for _ in range(cfg["epochs"]):
        perm, total = torch.randperm(len(y), generator=order), 0.0
        for start in range(0, len(y), cfg["batch_size"]):
            idx = perm[start:start + cfg["batch_size"]]

            def task_loss():
                return F.cross_entropy(standin.scale * encoder(x[idx]) @ text.T, y[idx])

            loss = task_loss()
            optimizer.zero_grad()
            loss.backward()
            if regularise:
                cosines.append(regularise_gradients(params, task_loss, rho=cfg["rho"],
                                                    strength=cfg["strength"]))
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
    return encoder.eval(), losses, (sum(cosines) / len(cosines) if cosines else None)


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    torch.set_num_threads(1)
    pool, shot_pool, val, halves, base, novel = base_to_novel_data(cfg["n_pretrain"], cfg["n_val"],
                                                                   cfg["n_test"], cfg["shift"])
    names = {"base": [FASHION_CLASSES[c] for c in base], "novel": [FASHION_CLASSES[c] for c in novel]}
    standin = cached_pretrain(*pool, FASHION_CLASSES, seed, epochs=cfg["pretrain_epochs"])
    text = {half: embed_texts([f"a photo of a {n}." for n in names[half]]) for half in names}
    tuning, curves, info = {}, {}, {}
    encoder = standin.image_encoder
    if ARMS[arm] is not None:
        shots = few_shot(*shot_pool, base, cfg["shots"], seed)
        best = None
        for lr in cfg["lr_grid"]:
            model, losses, cosine = train_lora(standin, ARMS[arm], cfg, lr, seed, shots, text["base"])
            score = encoder_accuracy(model, *val, text["base"])
            info[f"val_acc_lr_{lr:g}"] = score
            if best is None or score > best[0]:
                best = (score, lr, model, losses, cosine)
        _, lr, encoder, losses, cosine = best
        curves["train_loss"] = {"x": [float(e + 1) for e in range(len(losses))], "y": losses}
        if len(cfg["lr_grid"]) > 1:
            tuning["lr"] = {"grid": list(cfg["lr_grid"]), "selected": lr}
        info["lr"] = lr
        if cosine is not None:
            info["mean_cos_task_sam"] = cosine
    base_acc = encoder_accuracy(encoder, *halves["base"], text["base"])
    novel_acc = encoder_accuracy(encoder, *halves["novel"], text["novel"])
    metrics = {"novel_acc": novel_acc, "base_acc": base_acc, "hm": harmonic_mean(base_acc, novel_acc),
               "base_val_acc": encoder_accuracy(encoder, *val, text["base"])}
    resolution = {"novel_acc": 1 / len(halves["novel"][1]), "base_acc": 1 / len(halves["base"][1]),
                  "hm": 1 / len(halves["novel"][1]), "base_val_acc": 1 / len(val[1])}
    return RunOutput(metrics=metrics, curves=curves, info=info, resolution=resolution, tuning=tuning)
