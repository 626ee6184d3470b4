"""Paper 53, HFT (half fine-tuning): less forgetting than full fine-tuning.

Setting: the class-incremental ViT stream of paper 20 (:mod:`priorlab.reproductions.p020_rehearsal_free`),
a stand-in for the paper's sequential fine-tuning of an LLM. A small AttentionViT is pretrained on
four Fashion-MNIST classes (T-shirt, trouser, sandal, bag), then learns the six other classes as
three two-class tasks (pullover/dress, coat/shirt, sneaker/ankle boot), one fine-tuning stage per
task, with a fresh 10-way head and Adam (reset per task) on the cross-entropy over the current
task's classes. Arms: full fine-tuning of everything (``fft``); HFT
(``hft``): at the start of each stage a fresh random half of every block's attention matrices
(2 of Q, K, V, O) and MLP matrices (1 of 2) is frozen, everything else trains; and a control
(``random_half``) freezing as many matrices drawn from all blocks pooled. Patch embedding,
positions, class token, norms and head train in every arm. Each arm picks its learning rate from
the same five-value grid by the validation average accuracy after the last task. The accuracy
matrix is read on each task's own classes (task view): the paper's stages are judged each in its
own output format, and HFT acts on the encoder's matrices, whereas the class view (every class
seen so far, also recorded) is dominated by the shared head's drift to the newest classes. Metric:
forgetting (Chaudhry et al.) in the task view on the test split, lower is better; guard: the
accuracy on each task right after learning it (``new_task_acc``), so HFT must not buy retention
with plasticity.
"""

from __future__ import annotations

import dataclasses

import torch

from priorlab.continual.half_tuning import half_fine_tune
from priorlab.continual.metrics import average_accuracy, backward_transfer, forgetting
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
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.train import fit

# arm -> how the block matrices are frozen per stage: None (full fine-tuning), HFT's stratified
# half, or the same number of matrices drawn from all blocks pooled
ARMS = {"fft": None, "hft": "stratified", "random_half": "pooled"}

_COMMON = {"dataset": "fashion-mnist", "pretrain_classes": [0, 1, 5, 8],
           "stream_classes": [2, 3, 4, 6, 7, 9], "classes_per_task": 2,
           "image_size": 28, "patch_size": 7, "dim": 48, "depth": 3, "heads": 4, "mlp_dim": 96,
           "batch_size": 64, "pretrain_lr": 1e-3}

CLAUSE_FORGET = "HFT forgets less of earlier stages than full fine-tuning (FFT)"
CLAUSE_NEW = "while matching FFT's performance on the new task"
CLAUSE_TIME = "with about 30% less training time than FFT"
CLAUSE_LLM = ("on LLM supervised fine-tuning, DPO and continual-learning benchmarks (TRACE), "
              "HFT gives the best downstream scores")

CLAIM = Claim(
    seed_id=53,
    method="hft",
    statement=("Freezing a random half of each transformer block's parameter matrices at every "
               "fine-tuning stage (HFT) alleviates forgetting of earlier stages compared with "
               "full fine-tuning while matching its performance on the new task, with about 30% "
               "less training time; on LLM SFT, DPO and continual-learning benchmarks it gives "
               "the best downstream scores."),
    setting={
        "smoke": ("sklearn digits (8x8), a 1-block AttentionViT, one epoch per phase at lr "
                  "1e-2, no lr grid; checks that the pipeline runs."),
        "full": ("Fashion-MNIST (15,000 train / 5,000 val / 5,000 test images drawn before "
                 "splitting by class). AttentionViT: 7x7 patches, dim 48, 3 blocks, 4 heads, MLP "
                 "96. Pretraining (shared with paper 20): classes {0, 1, 5, 8}, 4 epochs, Adam lr "
                 "1e-3, batch 64. Stream: classes (2, 3), (4, 6), (7, 9), class-incremental, "
                 "fresh 10-way head, 2 epochs per task, Adam (reset per task), batch 64, "
                 "cross-entropy over the current task's classes. Learning rate per arm from "
                 "{1e-5, 3e-5, 1e-4, 3e-4, 1e-3} by validation ACC (task view) after the last "
                 "task (widened from {1e-4, 3e-4, 1e-3, 3e-3} after the seed-0 pilot picked its "
                 "lowest value for both FFT and HFT; there validation ACC is flat from 3e-5 to "
                 "3e-4 and drops at 1e-5 and, for FFT, at 1e-3). "
                 "Accuracies read on each task's own classes (task-incremental view); the "
                 "class-incremental view is recorded as class_forgetting / class_avg_acc. HFT "
                 "re-draws its half per task (stage) from the seed. Stand-in for a 7B LLM fine-tuned on "
                 "sequential instruction / preference / TRACE tasks."),
    },
    metric="forgetting",
    higher_is_better=False,
    arms=tuple(ARMS),
    # forgetting: one point of accuracy (~10 of the ~1,000 test images of an earlier task) is the
    # smallest reduction we call less forgetting; the paper's gaps to FFT are several points
    comparisons=(
        Comparison(method="hft", baseline="fft", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_FORGET),
    ),
    # new_task_acc: two points of just-learned-task accuracy is the loss of plasticity we
    # tolerate as "matching" (seeds move a two-class task's accuracy by about a point)
    guards=(Guard(metric="new_task_acc", higher_is_better=True, kind="non-inferiority",
                  margin=0.02, clause=CLAUSE_NEW),),
    clauses=(CLAUSE_FORGET, CLAUSE_NEW, CLAUSE_TIME, CLAUSE_LLM),
    untested=(
        Untested(CLAUSE_TIME, "wall time on two CPU cores shared by several jobs is too noisy to "
                              "test a 30% saving; the frozen share of the parameters is recorded "
                              "(frozen_fraction) instead"),
        Untested(CLAUSE_LLM, "no 7B LLM, instruction / preference data or TRACE offline; the "
                             "component runs on transformers Llama models (tested on tiny_llama) "
                             "but the reproduction uses the ViT stream"),
    ),
    budget=Budget(unit="epochs per task", ours=2, paper=None,
                  note=("the paper fine-tunes LLMs for a few epochs per stage on instruction "
                        "data; its per-stage budget has no counterpart on an image stream. Every "
                        "arm gets the same 2 epochs per task and the same lr grid")),
    tiers={
        "smoke": {**_COMMON, "dataset": "digits", "image_size": 8, "patch_size": 4, "dim": 8,
                  "depth": 1, "heads": 2, "mlp_dim": 16, "n_train": None, "n_val": None,
                  "n_test": None, "pretrain_epochs": 1, "epochs": 1,
                  "pretrain_lr": 1e-2, "lr_grid": [1e-2]},  # one epoch at 1e-3 learns nothing
        "full": {**_COMMON, "n_train": 15000, "n_val": 5000, "n_test": 5000,
                 "pretrain_epochs": 4, "epochs": 2, "lr_grid": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]},
    },
    seeds={"smoke": 2, "full": 5},  # one run (5 lr streams) takes ~30 s
    paper_value=("abstract: HFT significantly alleviates forgetting vs FFT and reaches the best "
                 "downstream scores with about 30% less training time (table values not "
                 "retrieved here)"),
    curves=("acc_after_task",),
    extra_metrics=("new_task_acc", "avg_acc", "bwt", "class_forgetting", "class_avg_acc",
                   "val_avg_acc", "selected_lr", "frozen_fraction"),
)


def _frozen_fraction(model: torch.nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if not p.requires_grad) / total


def _rows(model, streams: dict, i: int, split: str) -> dict:
    return {view: accuracy_row(model, stream, i, split=split) for view, stream in streams.items()}


def _train_stream(cfg: dict, seed: int, arm: str, lr: float) -> dict:
    data = task_images(cfg)
    stream = split_stream(data, cfg["classes_per_task"], class_order=cfg["stream_classes"])
    # the same tasks read two ways: each task's own classes (task view, the primary) and every
    # class seen so far (class view)
    views = {"task": dataclasses.replace(stream, scenario="task-incremental"), "class": stream}
    model = small_vit(cfg)
    model.load_state_dict(pretrained_vit(pretrain_key(cfg), seed))
    torch.manual_seed(seed)
    torch.nn.init.normal_(model.classifier.weight, std=0.02)  # fresh head for the stream
    torch.nn.init.zeros_(model.classifier.bias)
    batches = torch.Generator().manual_seed(seed)
    draws = torch.Generator().manual_seed(10_000 + seed)  # the halves, independent of the batches
    rows_test, frozen = [], []
    for i, task in enumerate(stream):
        if ARMS[arm] is not None:  # a fresh half per stage
            half_fine_tune(model, "attention_vit", generator=draws,
                           stratified=ARMS[arm] == "stratified")
        frozen.append(_frozen_fraction(model))
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        fit(model, epoch_batches(task.x_train, task.y_train, cfg["batch_size"], batches), optimizer,
            restricted_cross_entropy(list(task.classes)), epochs=cfg["epochs"], show_progress=False)
        rows_test.append(_rows(model, views, i, "test"))
    val = _rows(model, views, len(stream) - 1, "val")
    return {"lr": lr, "R_test": {v: [row[v] for row in rows_test] for v in views},
            "val_row": val["task"], "val_avg_acc": sum(val["task"]) / len(val["task"]),
            "frozen_fraction": sum(frozen) / len(frozen),
            "n_test_per_task": min(len(t.y_test) for t in stream)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    grid = list(cfg["lr_grid"])
    sweep = [_train_stream(cfg, seed, arm, lr) for lr in grid]
    best = max(sweep, key=lambda r: r["val_avg_acc"])  # first (smallest lr) wins ties
    R, R_class = best["R_test"]["task"], best["R_test"]["class"]
    metrics = {"forgetting": forgetting(R), "new_task_acc": sum(R[i][i] for i in range(len(R))) / len(R),
               "avg_acc": average_accuracy(R), "bwt": backward_transfer(R),
               "class_forgetting": forgetting(R_class), "class_avg_acc": average_accuracy(R_class),
               "val_avg_acc": best["val_avg_acc"], "selected_lr": best["lr"],
               "frozen_fraction": best["frozen_fraction"]}
    acc_curve = [average_accuracy([row[:i + 1] for row in R[:i + 1]]) for i in range(len(R))]
    info = {"R_test": R, "R_test_class": R_class, "val_final_row": best["val_row"],
            "sweep": [{"lr": r["lr"], "val_avg_acc": r["val_avg_acc"]} for r in sweep]}
    tuning = {"lr": {"grid": grid, "selected": best["lr"]}} if len(grid) > 1 else {}
    step = 1.0 / best["n_test_per_task"]
    return RunOutput(metrics=metrics, info=info, tuning=tuning,
                     resolution={"forgetting": step, "new_task_acc": step},
                     curves={"acc_after_task": {"x": [float(i + 1) for i in range(len(R))],
                                                "y": acc_curve}})
