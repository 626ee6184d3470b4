"""Paper 20, a closer look at rehearsal-free continual learning: L2 on attention Q/K/V.

A small AttentionViT is pretrained on four Fashion-MNIST classes (T-shirt, trouser, sandal,
bag), then learns the six other classes as a class-incremental stream of three two-class tasks
(pullover/dress, coat/shirt, sneaker/ankle boot) without storing any earlier data. Every arm
starts from the same pretrained encoder with a fresh head, trains each task with Adam on the
cross-entropy over the current task's classes only (the paper's FT++ head treatment) and is
tested over every class seen so far. Arms: plain fine-tuning of everything (``finetune``) or of
the attention Q/K/V projections and the head only (``finetune_qkv``); fine-tuning everything
with an L2 anchor on the encoder (``l2``), an EWC anchor (``ewc``), prediction distillation on
the old classes (``pred_kd``) or feature distillation of the class token (``feat_kd``); and the
paper's recipe, Q/K/V-only training with an L2 anchor on Q/K/V (``l2_qkv``). Anchors and feature
distillation start from the pretrained weights (task 0) and move to each task's weights after
it; EWC's first Fisher is the pretrained model's on its pretraining data. Each regulariser's
strength is chosen from its own four-value grid by the validation average accuracy. Metric:
average test accuracy over the three tasks after the last (ACC); forgetting and backward
transfer from the same accuracy matrix are recorded too.
"""

from __future__ import annotations

import copy

import torch

from priorlab.continual.metrics import average_accuracy, backward_transfer, forgetting
from priorlab.continual.regularisers import (
    ATTENTION_QKV,
    ParameterAnchor,
    diagonal_fisher,
    select_parameters,
)
from priorlab.continual.pretrained import (
    epoch_batches,
    pretrain_key,
    pretrained_vit,
    restricted_cross_entropy,
    small_vit,
    task_images,
)
from priorlab.continual.streams import accuracy_row, split_stream
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, RunOutput, Untested
from priorlab.methods.rehearsal_free import AnchorPenalty, FeatureDistillation, PredictionDistillation
from priorlab.nn.attention_vit import AttentionViT
from priorlab.train import fit

# arm -> (what trains: "all" parameters or "qkv" projections + head, regulariser or None)
ARMS = {"finetune": ("all", None), "finetune_qkv": ("qkv", None), "l2": ("all", "l2"),
        "ewc": ("all", "ewc"), "pred_kd": ("all", "pred_kd"), "feat_kd": ("all", "feat_kd"),
        "l2_qkv": ("qkv", "l2")}
ENCODER = r"^(?!classifier\.)"  # every parameter but the head's

_COMMON = {"dataset": "fashion-mnist", "pretrain_classes": [0, 1, 5, 8],
           "stream_classes": [2, 3, 4, 6, 7, 9], "classes_per_task": 2,
           "image_size": 28, "patch_size": 7, "dim": 48, "depth": 3, "heads": 4, "mlp_dim": 96,
           "batch_size": 64, "pretrain_lr": 1e-3, "lr": 1e-3, "kd_temperature": 2.0,
           "fisher_samples": 200}

CLAUSE_BEST = ("with a pretrained encoder, L2 on the attention Q/K/V parameters is the best of "
               "the rehearsal-free regularisers (L2, EWC, prediction and feature distillation)")
CLAUSE_VS_FT = "and beats plain fine-tuning"
CLAUSE_L2_EWC = "with a pretrained model, vanilla L2 outperforms EWC"
CLAUSE_L2_FEAT = "with a pretrained model, vanilla L2 outperforms feature distillation"
CLAUSE_SCRATCH = ("parameter regularisation does not fail for rehearsal-free class-incremental "
                  "learning from scratch")
CLAUSE_PROMPTS = "L2 in the self-attention blocks outperforms prompting methods on ImageNet-R"

CLAIM = Claim(
    seed_id=20,
    method="rehearsal-free",
    statement=("In rehearsal-free class-incremental learning with a pretrained encoder, L2 "
               "regularisation of the parameters towards their previous values, applied to the "
               "attention Q/K/V projections of a ViT, is the best of L2, EWC, prediction and "
               "feature distillation and beats plain fine-tuning; vanilla L2 beats EWC and "
               "feature distillation; parameter regularisation does not fail from scratch; L2 "
               "on Q/K/V beats prompting methods on ImageNet-R."),
    setting={
        "smoke": ("sklearn digits (8x8), a 1-block AttentionViT, one epoch per phase at lr "
                  "1e-2, one strength per regulariser; checks that the pipeline runs."),
        "full": ("Fashion-MNIST (15,000 train / 5,000 val / 5,000 test images drawn before "
                 "splitting by class). AttentionViT: 7x7 patches, dim 48, 3 blocks, 4 heads, "
                 "MLP 96 (about 60k parameters). Pretraining: classes {0, 1, 5, 8}, 4 epochs, "
                 "Adam lr 1e-3, batch 64. Stream: classes (2, 3), (4, 6), (7, 9), class-"
                 "incremental, fresh 10-way head, 2 epochs per task, Adam lr 1e-3 (reset per "
                 "task), batch 64, cross-entropy over the current task's classes. Strength grids "
                 "(four values each, chosen by validation ACC after the last task): L2 and L2 "
                 "on Q/K/V {0.01, 0.1, 1, 10}, EWC {10, 100, 1e3, 1e4}, prediction KD (T = 2) "
                 "{1, 3, 10, 30}, feature KD {0.1, 0.3, 1, 3} (widened from three values after "
                 "a two-seed pilot picked grid edges; prediction KD moved up one step after the "
                 "seed-0 pilot picked 10, its top). EWC Fisher from 200 samples per task. Stand-in "
                 "for ImageNet-pretrained ViT-B/16 and ImageNet-R: a small ViT pretrained here "
                 "on disjoint classes of the same dataset."),
    },
    metric="avg_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # avg_acc: one point of final average accuracy (~30 of 3,000 test images) is the smallest
    # gain we call an improvement; the paper's gaps between regularisers are several points
    comparisons=(
        Comparison(method="l2_qkv", baseline="finetune", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_VS_FT),
        Comparison(method="l2_qkv", baseline="l2", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_BEST),
        Comparison(method="l2_qkv", baseline="ewc", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_BEST),
        Comparison(method="l2_qkv", baseline="pred_kd", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_BEST),
        Comparison(method="l2_qkv", baseline="feat_kd", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_BEST),
        Comparison(method="l2", baseline="ewc", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_L2_EWC),
        Comparison(method="l2", baseline="feat_kd", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_L2_FEAT),
    ),
    clauses=(CLAUSE_BEST, CLAUSE_VS_FT, CLAUSE_L2_EWC, CLAUSE_L2_FEAT, CLAUSE_SCRATCH,
             CLAUSE_PROMPTS),
    untested=(
        Untested(CLAUSE_SCRATCH, "every arm here starts from the pretrained encoder (the "
                                 "headline setting); the from-scratch CIFAR-100 study is not run"),
        Untested(CLAUSE_PROMPTS, "no ImageNet-R or ImageNet-pretrained ViT offline, and prompting "
                                 "baselines (L2P, DualPrompt) are not implemented here"),
    ),
    budget=Budget(unit="epochs per task", ours=2, paper=None,
                  note=("the paper's per-task epochs on ImageNet-R could not be retrieved from "
                        "here (no paper text or official code reachable); 2 epochs per task fit "
                        "each two-class task to about its plateau here, and every arm gets the "
                        "same 2")),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "image_size": 8, "patch_size": 4, "dim": 8,
                  "depth": 1, "heads": 2, "mlp_dim": 16, "n_train": None, "n_val": None,
                  "n_test": None, "pretrain_epochs": 1, "epochs": 1, "fisher_samples": 16,
                  "lr": 1e-2, "pretrain_lr": 1e-2,  # one epoch at 1e-3 learns nothing
                  "grids": {"l2": [0.1], "ewc": [10.0], "pred_kd": [1.0], "feat_kd": [1.0]}},
        "full": {**_COMMON, "n_train": 15000, "n_val": 5000, "n_test": 5000,
                 "pretrain_epochs": 4, "epochs": 2,
                 "grids": {"l2": [0.01, 0.1, 1.0, 10.0], "ewc": [10.0, 100.0, 1000.0, 1e4],
                           "pred_kd": [1.0, 3.0, 10.0, 30.0], "feat_kd": [0.1, 0.3, 1.0, 3.0]}},
    },
    seeds={"smoke": 2, "full": 3},
    paper_value=("abstract: L2 in the self-attention blocks of a ViT beats prompting methods on "
                 "ImageNet-R; vanilla L2 beats EWC and feature distillation with a pretrained "
                 "model (table values not retrieved here)"),
    curves=("acc_after_task",),
    extra_metrics=("forgetting", "bwt", "val_avg_acc", "selected_strength", "last_task_acc"),
)


def _trainable(model: AttentionViT, scope: str) -> list[torch.nn.Parameter]:
    if scope == "all":
        return list(model.parameters())
    chosen = {id(p) for p in select_parameters(model, ATTENTION_QKV).values()}
    chosen |= {id(p) for p in model.classifier.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return [p for p in model.parameters() if p.requires_grad]


def _fisher(model, x, classes, cfg: dict):
    return diagonal_fisher(model, x[:cfg["fisher_samples"]], pattern=ENCODER, classes=classes)


def _train_stream(cfg: dict, seed: int, arm: str, strength: float) -> dict:
    scope, regulariser = ARMS[arm]
    data = task_images(cfg)
    stream = split_stream(data, cfg["classes_per_task"], class_order=cfg["stream_classes"])
    model = small_vit(cfg)
    model.load_state_dict(pretrained_vit(pretrain_key(cfg), seed))
    pre_x = data.x_train[torch.isin(data.y_train, torch.tensor(cfg["pretrain_classes"]))]
    anchor = None
    if regulariser == "ewc":
        anchor = ParameterAnchor(model, ENCODER,
                                 _fisher(model, pre_x, cfg["pretrain_classes"], cfg))
    elif regulariser == "l2":
        anchor = ParameterAnchor(model, ATTENTION_QKV if scope == "qkv" else ENCODER)
    teacher = copy.deepcopy(model)  # the pretrained model, then the model after each task
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.classifier.weight, std=0.02)  # fresh head for the stream
    torch.nn.init.zeros_(model.classifier.bias)
    params = _trainable(model, scope)
    generator = torch.Generator().manual_seed(seed)
    rows_test = []
    for i, task in enumerate(stream):
        adapters = []
        if anchor is not None:
            adapters.append(AnchorPenalty(strength, anchor=anchor))
        elif regulariser == "feat_kd":
            adapters.append(FeatureDistillation(teacher, strength))
        elif regulariser == "pred_kd" and i > 0:
            adapters.append(PredictionDistillation(teacher, stream.seen_classes(i - 1), strength,
                                                   cfg["kd_temperature"]))
        optimizer = torch.optim.Adam(params, lr=cfg["lr"])
        fit(model, epoch_batches(task.x_train, task.y_train, cfg["batch_size"], generator), optimizer,
            restricted_cross_entropy(list(task.classes)), epochs=cfg["epochs"], adapters=adapters,
            show_progress=False)
        for adapter in adapters:
            if isinstance(adapter, FeatureDistillation):
                adapter.remove()
        if regulariser == "ewc":
            anchor.consolidate(model, _fisher(model, task.x_train, stream.seen_classes(i), cfg))
        elif anchor is not None:
            anchor.consolidate(model)
        teacher = copy.deepcopy(model)
        rows_test.append(accuracy_row(model, stream, i, split="test"))
    # selection needs only the final validation row (ACC after the last task)
    val_row = accuracy_row(model, stream, len(stream) - 1, split="val")
    return {"strength": strength, "R_test": rows_test, "val_row": val_row,
            "val_avg_acc": sum(val_row) / len(val_row),
            "n_test": sum(len(t.y_test) for t in stream)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    regulariser = ARMS[arm][1]
    grid = cfg["grids"][regulariser] if regulariser is not None else [0.0]
    sweep = [_train_stream(cfg, seed, arm, s) for s in grid]
    best = max(sweep, key=lambda r: r["val_avg_acc"])  # first (weakest) wins ties
    R = best["R_test"]
    metrics = {"avg_acc": average_accuracy(R), "forgetting": forgetting(R),
               "bwt": backward_transfer(R), "val_avg_acc": best["val_avg_acc"],
               "selected_strength": best["strength"], "last_task_acc": R[-1][-1]}
    # ACC over the tasks seen so far, after each task
    acc_curve = [average_accuracy([row[:i + 1] for row in R[:i + 1]]) for i in range(len(R))]
    info = {"R_test": R, "val_final_row": best["val_row"],
            "sweep": [{"strength": r["strength"], "val_avg_acc": r["val_avg_acc"]} for r in sweep]}
    tuning = {"strength": {"grid": list(grid), "selected": best["strength"]}} if regulariser else {}
    resolution = {"avg_acc": 1.0 / best["n_test"]}
    return RunOutput(metrics=metrics, info=info, resolution=resolution, tuning=tuning,
                     curves={"acc_after_task": {"x": [float(i + 1) for i in range(len(R))],
                                                "y": acc_curve}})
