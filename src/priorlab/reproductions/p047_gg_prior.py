"""Paper 47, generalised Gaussian priors: BackSlash-trained weights survive heavy pruning.

An MLP on sklearn digits, trained with Adam. Arms differ in the initialisation (PyTorch default
or GG of shape 1) and the weight penalty (none, L1 = BackSlash with nu fixed to 1, or BackSlash
with nu re-fitted per tensor every epoch). After training, the 80% smallest-magnitude entries
of every weight matrix are zeroed and the test accuracy of the pruned network is the metric.
Penalised arms pick lam from one grid by the pruned validation accuracy (ties: smaller lam),
so L1 and BackSlash each get their best strength. Also recorded: unpruned accuracy, the
accuracy-vs-pruned-fraction curve, steps until the training loss falls below a target (GG vs
default init: the paper's faster-convergence claim), and DeepShape (reshaping every trained
weight matrix to a GG of shape 0.5) before and after pruning.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import load_images
from priorlab.errors import did_you_mean
from priorlab.functional.gg_prior import (
    deepshape_,
    estimate_gg_shape,
    gg_init_,
    prune_smallest_,
)
from priorlab.harness.claim import Claim, Comparison, RunOutput
from priorlab.hooks import Adapter
from priorlab.methods.gg_prior import BackSlash
from priorlab.models import mlp
from priorlab.seed import seed_everything
from priorlab.train import accuracy, fit

# arm -> (GG init shape or None for PyTorch's default, penalty: None | "l1" | "backslash")
ARMS = {"default": (None, None), "gg_init": (1.0, None), "l1": (None, "l1"),
        "backslash": (None, "backslash"), "gg_backslash": (1.0, "backslash")}

_COMMON = {"dataset": "digits", "hidden": [256, 256], "batch_size": 64, "lr": 1e-3,
           "prune_fraction": 0.8,
           # half-decade grid; 1e-3 was added after a one-seed pilot picked 3e-4 (the top of the
           # first grid) for both L1 and BackSlash
           "lam_grid": [3e-5, 1e-4, 3e-4, 1e-3], "target_loss": 0.1, "deepshape_shape": 0.5,
           "curve_fractions": [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]}

CLAIM = Claim(
    seed_id=47,
    method="backslash",
    statement=("Training under a generalised Gaussian prior (BackSlash: lam sum |w|^nu with nu "
               "re-fitted to the weights, best with GG initialisation) leaves a network that "
               "keeps its accuracy when most weights are pruned, better than L1 or no penalty."),
    setting={
        "smoke": ("sklearn digits, MLP 64-32-10, 2 epochs, one lam; checks that the pipeline "
                  "runs."),
        "full": ("sklearn digits (1,078 train / 359 val / 360 test), MLP 64-256-256-10 (ReLU), "
                 "Adam lr 1e-3, batch 64, 40 epochs. GG init: shape 1 (Laplace), variance of "
                 "PyTorch's default init, weights only. Penalties on the three weight matrices; "
                 "BackSlash re-fits nu per matrix every epoch (17 steps); lam from {3e-5, 1e-4, "
                 "3e-4, 1e-3} by pruned validation accuracy. Metric: test accuracy after "
                 "zeroing the 80% smallest-magnitude entries of each weight matrix (no "
                 "fine-tuning). The paper trains LLMs; pruning rates of 60-90% are its regime "
                 "(BackSlash paper)."),
    },
    metric="pruned_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # Pruned accuracy, fixed before running: BackSlash must beat L1 by a point (its claim is a
    # better prior than the fixed Laplace one), and no penalty by two points (its claim is
    # robustness to pruning); GG init must add a point on top of BackSlash (the paper pairs them).
    comparisons=(
        Comparison(method="backslash", baseline="l1", kind="superiority", min_effect=0.01),
        Comparison(method="backslash", baseline="default", kind="superiority", min_effect=0.02),
        Comparison(method="gg_backslash", baseline="backslash", kind="superiority",
                   min_effect=0.01),
    ),
    tiers={
        "smoke": {**_COMMON, "hidden": [32], "epochs": 2, "lam_grid": [1e-4]},
        "full": {**_COMMON, "epochs": 40},
    },
    seeds={"smoke": 2, "full": 8},
    paper_value=("BackSlash (abstract): 60-90% fewer parameters without accuracy loss, "
                 "accuracy kept at 80% pruning; GG init: faster convergence (LLMs)."),
    curves=("pruned_acc_vs_fraction", "train_loss", "val_acc"),
    extra_metrics=("test_acc", "val_pruned_acc", "selected_lam", "steps_to_target",
                   "final_shape_mean", "deepshape_acc", "deepshape_pruned_acc"),
)


class _StepLosses(Adapter):
    """Keeps each step's task loss, for steps-to-target at step resolution."""

    def __init__(self):
        self.losses: list[float] = []

    def after_step(self, ctx) -> None:
        with torch.no_grad():
            self.losses.append(float(F.cross_entropy(ctx.outputs, ctx.targets)))


@lru_cache(maxsize=2)
def _data(dataset: str):
    return load_images(dataset, split_seed=0)


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.dim() >= 2]


def _pruned_accuracy(model: nn.Module, fraction: float, x, y, *, reshape_to=None) -> float:
    pruned = copy.deepcopy(model)
    if reshape_to is not None:
        for w in _weights(pruned):
            deepshape_(w, reshape_to)
    prune_smallest_(_weights(pruned), fraction)
    return accuracy(pruned, x, y)


def _steps_to_target(losses: list[float], window: int, target: float) -> tuple[float, bool]:
    """First step whose trailing mean loss (over ``window`` steps) is <= target; censored at the
    end of training plus one window when never reached."""
    smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
    hits = np.nonzero(smoothed <= target)[0]
    if hits.size == 0:
        return float(len(losses) + window), False
    return float(hits[0] + window), True


def _train(cfg: dict, seed: int, init_shape, penalty, lam: float) -> dict:
    data = _data(cfg["dataset"])
    seed_everything(seed)
    model = mlp(data.x_train[0].numel(), list(cfg["hidden"]), data.num_classes)
    if init_shape is not None:
        generator = torch.Generator().manual_seed(seed)
        for w in _weights(model):
            gg_init_(w, init_shape, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    order = torch.Generator().manual_seed(seed)
    n, batch = len(data.y_train), cfg["batch_size"]
    steps_per_epoch = -(-n // batch)

    def batches():
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            yield data.x_train[idx], data.y_train[idx]

    recorder = _StepLosses()
    adapters: list[Adapter] = [recorder]
    if penalty is not None:
        adapters.append(BackSlash(lam, nu=1.0 if penalty == "l1" else None,
                                  update_every=steps_per_epoch))
    history = fit(model, batches, optimizer, F.cross_entropy, epochs=cfg["epochs"],
                  adapters=adapters,
                  evaluate=lambda m: {"val_acc": accuracy(m, data.x_val, data.y_val)},
                  show_progress=False)
    model.eval()
    steps, reached = _steps_to_target(recorder.losses, steps_per_epoch, cfg["target_loss"])
    return {"model": model, "lam": lam, "history": history, "steps_to_target": steps,
            "reached_target": reached, "steps_per_epoch": steps_per_epoch,
            "val_pruned_acc": _pruned_accuracy(model, cfg["prune_fraction"],
                                               data.x_val, data.y_val)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    init_shape, penalty = ARMS[arm]
    grid = cfg["lam_grid"] if penalty is not None else [0.0]
    sweep = [_train(cfg, seed, init_shape, penalty, lam) for lam in grid]
    best = max(sweep, key=lambda r: r["val_pruned_acc"])  # first (smallest lam) wins ties
    model, data = best["model"], _data(cfg["dataset"])
    x_test, y_test = data.x_test, data.y_test
    fraction = cfg["prune_fraction"]
    shapes = [estimate_gg_shape(w) for w in _weights(model)]
    curve_y = [_pruned_accuracy(model, f, x_test, y_test) for f in cfg["curve_fractions"]]
    metrics = {
        "pruned_acc": _pruned_accuracy(model, fraction, x_test, y_test),
        "test_acc": accuracy(model, x_test, y_test),
        "val_pruned_acc": best["val_pruned_acc"],
        "selected_lam": best["lam"],
        "steps_to_target": best["steps_to_target"],
        "final_shape_mean": float(np.mean(shapes)),
        "deepshape_acc": _pruned_accuracy(model, 0.0, x_test, y_test,
                                          reshape_to=cfg["deepshape_shape"]),
        "deepshape_pruned_acc": _pruned_accuracy(model, fraction, x_test, y_test,
                                                 reshape_to=cfg["deepshape_shape"]),
    }
    history, per_epoch = best["history"], best["steps_per_epoch"]
    steps = [float(e * per_epoch) for e in history["epoch"]]
    curves = {
        "pruned_acc_vs_fraction": {"x": [float(f) for f in cfg["curve_fractions"]],
                                   "y": curve_y},
        "train_loss": {"x": steps, "y": history["loss/task"]},
        "val_acc": {"x": steps, "y": history["val_acc"]},
    }
    info = {"init_shape": init_shape, "penalty": penalty, "final_shapes": shapes,
            "reached_target": best["reached_target"],
            "selected_at_grid_edge": penalty is not None and best["lam"] in (grid[0], grid[-1]),
            "sweep": [{"lam": r["lam"], "val_pruned_acc": r["val_pruned_acc"],
                       "steps_to_target": r["steps_to_target"]} for r in sweep]}
    return RunOutput(metrics=metrics, curves=curves, info=info)
