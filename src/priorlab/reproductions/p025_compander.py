"""Paper 25, Weight Compander: companded weights generalise better, with or without weight decay.

A small CNN on few training digits (the small-data regime where regularisation matters), trained
with SGD + momentum and a cosine schedule, with and without weight decay, with and without the
weight compander on every conv/linear weight (biases untouched). Everything else (data, order,
initial effective weights, schedule) is shared by the four arms of a seed. The metric is the
accuracy on the held-out images after the last epoch (nothing is selected on them).
Histograms of the final effective weights go into the curves as ``weight_hist``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput, Untested
from priorlab.models import SmallCNN
from priorlab.nn.compander import apply_weight_compander, effective_weights
from priorlab.seed import seed_everything
from priorlab.train import SchedulerStep, accuracy, fit

ARMS = {"plain": (False, False), "plain_wd": (False, True),
        "compander": (True, False), "compander_wd": (True, True)}

_COMMON = {"dataset": "digits", "channels": 16, "batch_size": 32, "lr": 0.05, "momentum": 0.9,
           "weight_decay": 5e-4, "alpha": 4.0, "beta": 2.0, "hist_range": 1.0, "hist_bins": 41}

CLAIM = Claim(
    seed_id=25,
    method="weight-compander",
    statement=("Reparametrising every weight through the weight compander improves test "
               "accuracy, alone and on top of weight decay (standard regularisation)."),
    setting={
        "smoke": ("sklearn digits, 100 training images, SmallCNN (8 channels), 3 epochs; checks "
                  "that the pipeline runs."),
        "full": ("sklearn digits (8x8), 200 training images (about 20 per class), accuracy on the "
                 "719 held-out images (the val and test splits; nothing is tuned on them). "
                 "SmallCNN with 16/32 channels, SGD lr 0.05, momentum 0.9, batch 32, cosine decay "
                 "to 0 over 60 epochs; weight decay 5e-4 in the *_wd arms (on the raw "
                 "parameters). Compander f(w) = alpha tanh(beta w / alpha) on conv and linear "
                 "weights, alpha = 4 initial stds per tensor, beta = 2, effective weights "
                 "initialised to the default init. The paper trains much larger image "
                 "classifiers for far longer."),
    },
    metric="test_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # min_effect 0.005 (half a point, ~3.5 of 719 test images): the smallest gain that would make
    # a regulariser worth adding; the paper's own numbers could not be retrieved.
    comparisons=(
        Comparison(method="compander", baseline="plain", kind="superiority", min_effect=0.005,
                   clause="the compander improves test accuracy alone"),
        Comparison(method="compander_wd", baseline="plain_wd", kind="superiority",
                   min_effect=0.005, clause="the compander improves test accuracy on top of weight decay"),
    ),
    clauses=("the compander improves test accuracy alone",
             "the compander improves test accuracy on top of weight decay",
             "the gain holds for large image classifiers"),
    untested=(Untested("the gain holds for large image classifiers",
                       "CPU budget: 8x8 digits and a two-layer CNN stand in for the paper's "
                       "CIFAR/ImageNet networks"),),
    budget=Budget("epochs", ours=60, paper=None,
                  note="the paper's schedules could not be retrieved here; 60 epochs on 200 images "
                       "train every arm to ~100% training accuracy"),
    revisions=(Revision(2, "restore the 20 full-tier seeds first declared; they had been cut to 10 "
                           "before claims were locked, which an outside review found decisive"),),
    tiers={
        "smoke": {**_COMMON, "n_train": 100, "channels": 8, "epochs": 3},
        "full": {**_COMMON, "n_train": 200, "epochs": 60},
    },
    # 20 seeds, as first declared (revision 2 restores them; see revisions).
    seeds={"smoke": 2, "full": 20},
    paper_value="not retrieved (paper text and code unavailable here); the abstract claims a gain.",
    curves=("test_acc", "weight_hist"),
    extra_metrics=("train_acc", "weight_abs_mean", "weight_near_zero", "weight_abs_max"),
)


@lru_cache(maxsize=2)
def _data(dataset: str, n_train: int):
    data = load_images(dataset, n_train=n_train, split_seed=0)
    return (data.x_train, data.y_train, torch.cat([data.x_val, data.x_test]),
            torch.cat([data.y_val, data.y_test]), data.num_classes, data.x_train.shape[-1])


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    use_compander, use_wd = ARMS[arm]
    x_train, y_train, x_test, y_test, num_classes, size = _data(cfg["dataset"], cfg["n_train"])
    seed_everything(seed)
    model = SmallCNN(num_classes, channels=cfg["channels"], image_size=size)
    if use_compander:
        apply_weight_compander(model, alpha=cfg["alpha"], beta=cfg["beta"])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"] if use_wd else 0.0)
    order = torch.Generator().manual_seed(seed)
    n, batch = len(y_train), cfg["batch_size"]

    def batches():
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            yield x_train[idx], y_train[idx]

    steps = cfg["epochs"] * -(-n // batch)
    history = fit(model, batches, optimizer, F.cross_entropy, epochs=cfg["epochs"],
                  adapters=[SchedulerStep(torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps))],
                  evaluate=lambda m: {"test_acc": accuracy(m, x_test, y_test)},
                  show_progress=False)
    model.eval()
    weights = torch.cat([w.flatten() for w in effective_weights(model)]).numpy()
    edges = np.linspace(-cfg["hist_range"], cfg["hist_range"], cfg["hist_bins"] + 1)
    density, _ = np.histogram(np.clip(weights, edges[0], edges[-1]), bins=edges, density=True)
    metrics = {
        "test_acc": accuracy(model, x_test, y_test),
        "train_acc": accuracy(model, x_train, y_train),
        "weight_abs_mean": float(np.abs(weights).mean()),
        "weight_abs_max": float(np.abs(weights).max()),
        # share of effective weights within 1% of the largest magnitude: "dead" weights
        "weight_near_zero": float((np.abs(weights) < 0.01 * np.abs(weights).max()).mean()),
    }
    curves = {
        "test_acc": {"x": [float(e) for e in history["epoch"]], "y": history["test_acc"]},
        "weight_hist": {"x": ((edges[:-1] + edges[1:]) / 2).tolist(), "y": density.tolist()},
    }
    info = {"compander": use_compander, "weight_decay": cfg["weight_decay"] if use_wd else 0.0,
            "final_train_loss": history["loss/task"][-1], "n_weights": int(weights.size)}
    return RunOutput(metrics=metrics, curves=curves, info=info,
                     resolution={"test_acc": 1 / len(y_test), "train_acc": 1 / len(y_train)})
