"""Paper 46, DiSa: cross-interactive + saliency-masked + directional regularisation of prompts.

The base-to-novel protocol of PromptSRC's reproduction (:mod:`priorlab.reproductions.p026_promptsrc`),
unchanged: the vision-language stand-in of :mod:`priorlab.vl` (a small ViT pre-trained here per
seed with the CLIP loss against frozen MiniLM caption embeddings of all ten Fashion-MNIST
classes), prompts learned on 16 shots of each of the five base classes, tested on the official
test images of the base classes and of the five novel ones (5-way each), downstream images
upside down as the domain gap.

Arms: ``zero_shot``, ``coop`` and ``promptsrc`` are p026's arms (imported, not re-implemented);
``disa`` is PromptSRC (same prompts, self-consistency terms and Gaussian prompt aggregation)
plus DiSa's cross-interactive KL computed on saliency-masked images and the directional term
``1 - cos(f_p, class mean of the frozen features of the shots)``. All prompt arms share data,
shots, order, optimiser, epochs and the learning-rate grid, selected per arm on held-out base
images.
"""

from __future__ import annotations

import torch

from priorlab.errors import did_you_mean
from priorlab.functional.disa import (
    class_prototypes,
    disa_loss,
    mask_patches,
    patch_saliency,
    saliency_keep_mask,
    standin_patch_features,
)
from priorlab.functional.prompt_regularisers import GaussianPromptAggregator
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.reproductions.p026_promptsrc import run_prompt_arm, train_prompts
from priorlab.seed import seed_everything
from priorlab.vl.standin import PromptedStandIn

ARMS = ("zero_shot", "coop", "promptsrc", "disa")

_COMMON = {"shift": "flip", "n_pretrain": 10_000, "pretrain_epochs": 3, "shots": 16, "batch_size": 16,
           "n_context": 4, "n_visual": 4, "momentum": 0.9, "weight_decay": 5e-4,
           "text_weight": 25.0, "image_weight": 10.0, "gpa_mean_frac": 0.75, "gpa_std_frac": 0.05,
           "cross_weight": 1.0, "direction_weight": 1.0, "mask_ratio": 0.25}

CLAIM = Claim(
    seed_id=46,
    method="disa",
    statement=("Adding cross-interactive regularisation (prompted image vs frozen text against "
               "frozen image vs prompted text, on saliency-masked images) and a directional "
               "regulariser towards class-mean prototypes of the frozen image features to "
               "PromptSRC-style prompt learning gives higher novel-class accuracy than PromptSRC "
               "and CoOp at no loss of base-class accuracy, and a higher base/novel harmonic mean."),
    setting={
        "smoke": ("stand-in pre-trained on 600 images for 1 epoch, 2 shots per base class, "
                  "2 epochs, 200 test images per half; checks that the pipeline runs."),
        "full": ("p026's protocol: Fashion-MNIST split seed 0; stand-in ViT (patch 7, width 64, "
                 "depth 3) + frozen all-MiniLM-L6-v2, pre-trained on 10k images of all 10 classes "
                 "(cached per seed, shared with p026); downstream images upside down. Prompt "
                 "learning: 4 text context + 4 visual tokens (CoOp: text only), 16 shots x 5 base "
                 "classes, batch 16, SGD momentum 0.9, weight decay 5e-4, cosine schedule, 10 "
                 "epochs, lr per arm from {0.015, 0.05, 0.15, 0.5, 1.5, 4.5} by base accuracy on "
                 "1000 validation images. PromptSRC terms 25 / 10 / 1 and GPA (mean epoch 7.5, std "
                 "0.5) in both promptsrc and disa; DiSa adds CIR weight 1 on images with the "
                 "25% least salient 7x7 patches (4 of 16) blanked, saliency = cosine of the frozen "
                 "ViT's projected patch tokens with the frozen text feature of the image's class, "
                 "and DiR weight 1 with prototypes from the frozen features of the 80 shots. Test: "
                 "5000 official test images per half, 5-way each. Paper: CLIP ViT-B/16, 11 "
                 "datasets, deep IVLP prompts."),
    },
    metric="novel_acc",
    higher_is_better=True,
    arms=ARMS,
    # min_effect 0.01: one point of novel accuracy (50 of 5000 images), the smallest gain worth
    # a method (the paper's DiSa-vs-PromptSRC table numbers were not reachable here)
    comparisons=(
        Comparison(method="disa", baseline="promptsrc", kind="superiority", min_effect=0.01,
                   clause="higher novel-class accuracy than PromptSRC"),
        Comparison(method="disa", baseline="coop", kind="superiority", min_effect=0.01,
                   clause="higher novel-class accuracy than CoOp"),
    ),
    guards=(
        # margin 0.01: "equal base accuracy" within one point (50 of 5000 images)
        Guard(metric="base_acc", higher_is_better=True, kind="non-inferiority", margin=0.01,
              clause="at no loss of base-class accuracy"),
        # min_effect 0.005: half a point of harmonic mean, as p026
        Guard(metric="hm", higher_is_better=True, kind="superiority", min_effect=0.005,
              clause="a higher base/novel harmonic mean"),
    ),
    clauses=("higher novel-class accuracy than PromptSRC",
             "higher novel-class accuracy than CoOp",
             "at no loss of base-class accuracy",
             "a higher base/novel harmonic mean",
             "each component (CIR, saliency masking, DiR) adds to the gain",
             "the gains hold with CLIP on 11 real datasets and in cross-dataset / domain / few-shot "
             "transfer"),
    untested=(
        Untested("each component (CIR, saliency masking, DiR) adds to the gain",
                 "the paper's ablation (Table 5) needs three more trained arms per seed; the full "
                 "tier's budget holds the headline comparison only"),
        Untested("the gains hold with CLIP on 11 real datasets and in cross-dataset / domain / few-shot "
                 "transfer", "no CLIP weights or those datasets offline: one Fashion-MNIST stand-in"),
    ),
    budget=Budget("epochs", ours=10, paper=20,
                  note="prompt-learning epochs on 16 shots per base class, as p026 (PromptSRC's "
                       "schedule, which DiSa builds on; paper batch 4, ours 16)"),
    tiers={
        "smoke": {**_COMMON, "n_pretrain": 600, "pretrain_epochs": 1, "shots": 2, "epochs": 2,
                  "n_val": 100, "n_test": 200, "lr_grid": (0.15,)},
        "full": {**_COMMON, "epochs": 10, "n_val": 1000, "n_test": 5000,
                 "lr_grid": (0.015, 0.05, 0.15, 0.5, 1.5, 4.5)},
    },
    seeds={"smoke": 1, "full": 5},
    paper_value=("DiSa's Table 1 (average over 11 datasets) was not reachable here; the baselines "
                 "it compares to: PromptSRC 84.26 / 76.10 / 80.10 and CoOp 82.69 / 63.22 / 71.66 "
                 "(base / novel / HM, PromptSRC's Table 1)"),
    curves=("train_loss",),
    extra_metrics=("base_acc", "hm", "base_val_acc"),
)


def train_disa(standin, cfg: dict, lr: float, seed: int, shots, base_names, frozen_text):
    """PromptSRC's loop of p026 with DiSa's two extra terms."""
    seed_everything(seed)
    model = PromptedStandIn(standin, n_text_context=cfg["n_context"], n_visual_prompts=cfg["n_visual"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    x, y = shots
    steps_per_epoch = -(-len(y) // cfg["batch_size"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg["epochs"] * steps_per_epoch)
    gpa = GaussianPromptAggregator(params, cfg["epochs"], mean=cfg["gpa_mean_frac"] * cfg["epochs"],
                                   std=cfg["gpa_std_frac"] * cfg["epochs"])
    encoder = standin.image_encoder
    with torch.no_grad():
        frozen_all = encoder(x)
        prototypes = class_prototypes(frozen_all, y, len(base_names))
        keep = saliency_keep_mask(patch_saliency(standin_patch_features(encoder, x), frozen_text, y),
                                  cfg["mask_ratio"])
        masked_x = mask_patches(x, keep, encoder.patch_size)  # frozen saliency: fixed per shot
    order, losses = torch.Generator().manual_seed(seed), []
    for _ in range(cfg["epochs"]):
        perm, total = torch.randperm(len(y), generator=order), 0.0
        for start in range(0, len(y), cfg["batch_size"]):
            idx = perm[start:start + cfg["batch_size"]]
            logits, text, image = model(x[idx], base_names)
            masked_image = model.image_features(masked_x[idx])
            frozen_image = frozen_all[idx]
            zero_shot = standin.scale * frozen_image @ frozen_text.T
            loss = disa_loss(logits, y[idx], text, frozen_text, image, frozen_image, zero_shot, masked_image,
                             prototypes, standin.scale, text_weight=cfg["text_weight"],
                             image_weight=cfg["image_weight"], cross_weight=cfg["cross_weight"],
                             direction_weight=cfg["direction_weight"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        losses.append(total / len(y))
        gpa.update()
    gpa.load_into()
    return model, losses


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    if arm == "zero_shot":
        return run_prompt_arm(None, cfg, seed)
    if arm == "disa":
        return run_prompt_arm(lambda standin, lr, shots, base_names, frozen_text:
                              train_disa(standin, cfg, lr, seed, shots, base_names, frozen_text), cfg, seed)
    return run_prompt_arm(lambda standin, lr, shots, base_names, frozen_text:  # p026's own loop
                          train_prompts(standin, arm, cfg, lr, seed, shots, base_names, frozen_text),
                          cfg, seed)
