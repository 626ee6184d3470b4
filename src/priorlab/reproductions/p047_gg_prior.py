"""Paper 47, generalised Gaussian priors: BackSlash-trained weights survive heavy pruning.

An MLP on sklearn digits, trained with Adam. Arms differ in the initialisation (PyTorch default,
or the official GG init: shape 2, variance 2 / shape[0], zero biases) and in the rate step
applied outside the optimiser after every batch (none; the official BackSlash step with one GG
shape re-fitted to all weights pooled; or the same step with the shape fixed to 1, an L1 sign
step). Penalised arms take the step for ``backslash_epochs`` and then fine-tune plainly for
``finetune_epochs`` (the official recipe); unpenalised arms train the same total. After
training, the 80% smallest-magnitude entries of every weight matrix are zeroed and the test
accuracy of the pruned network is the metric. Penalised arms pick the rate from one grid by the
pruned validation accuracy (ties: smaller rate). Also recorded: unpruned accuracy, the
accuracy-vs-pruned-fraction curve, steps until the training loss falls below a target (GG vs
default init: the paper's faster-convergence claim), the pooled GG shape per epoch, and
DeepShape (reshaping every trained weight matrix to a GG of shape 0.5) before and after pruning.
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
    gg_init_model_,
    lookup_gg_shape,
    prune_smallest_,
)
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, Revision, RunOutput, Untested
from priorlab.hooks import Adapter
from priorlab.methods.gg_prior import BackSlash
from priorlab.models import mlp
from priorlab.seed import seed_everything
from priorlab.train import accuracy, fit

# arm -> (GG init shape or None for PyTorch's default, step: None | "l1" | "backslash")
ARMS = {"default": (None, None), "gg_init": (2.0, None), "l1": (None, "l1"),
        "backslash": (None, "backslash"), "gg_backslash": (2.0, "backslash")}

_COMMON = {"dataset": "digits", "hidden": [256, 256], "batch_size": 64, "lr": 1e-3,
           "prune_fraction": 0.8, "gg_xi": 2.0,
           # chosen from a two-seed pilot over 0.3 ... 500 before declaring: rates <= 3 change
           # little, the L1 step collapses the network from 100 on, BackSlash's from 500
           "rate_grid": [10.0, 20.0, 50.0, 100.0, 200.0, 500.0], "target_loss": 0.1,
           "deepshape_shape": 0.5,
           "curve_fractions": [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]}

CLAUSE_VS_NONE = "BackSlash-trained networks keep accuracy under heavy pruning better than unpenalised ones"
CLAUSE_VS_L1 = "the re-fitted GG shape beats a fixed Laplace shape (L1) applied the same way"
CLAUSE_GG_ADDS = "GG initialisation adds to BackSlash"
CLAUSE_LITTLE_LOSS = "with little loss of unpruned accuracy"
CLAUSE_FASTER = "GG initialisation converges faster"
CLAUSE_ACCURACY = "GG initialisation reaches higher accuracy"

CLAIM = Claim(
    seed_id=47,
    method="backslash",
    statement=("Training under a generalised Gaussian prior (BackSlash: after every batch one GG "
               "shape is re-fitted to the weights and a rate-constrained step is taken, then plain "
               "fine-tuning) leaves a network that keeps its accuracy when most weights are "
               "pruned, with little loss unpruned, better than the same step with a fixed "
               "Laplace shape (L1) or no penalty; GG initialisation converges faster, reaches "
               "higher accuracy and adds to BackSlash."),
    setting={
        "smoke": ("sklearn digits, MLP 64-32-10, 2 + 1 epochs, one rate; checks that the pipeline "
                  "runs."),
        "full": ("sklearn digits (1,078 train / 359 val / 360 test), MLP 64-256-256-10 (ReLU, "
                 "85,002 parameters), Adam lr 1e-3, batch 64, 40 epochs. GG init (official "
                 "gg_init): shape 2, variance 2 / shape[0] (fan-out), biases 0. BackSlash "
                 "(official backslash.py): after every Adam step, one shape nu looked up over "
                 "[0.1, 3] from all 85,002 parameters pooled, then w -= rate nu / N sign(w) "
                 "(|w| + 1)^(nu - 1) on all of them, for 30 epochs, then 10 epochs of plain "
                 "fine-tuning with the same optimiser; L1 is the same step with nu = 1. rate "
                 "from {10, 20, 50, 100, 200, 500} per arm by pruned validation accuracy (the "
                 "official 2e3 is for N ~ 1e8 weights, a step of ~2e-5; rate 1.7 gives that step "
                 "here, too weak to matter in 40 epochs with Adam lr 1e-3). Metric: "
                 "test accuracy after zeroing the 80% smallest-magnitude entries of each weight "
                 "matrix (no fine-tuning after pruning). The paper trains LLMs; 60-90% pruning is "
                 "its regime (BackSlash paper)."),
    },
    metric="pruned_acc",
    higher_is_better=True,
    arms=tuple(ARMS),
    # Pruned accuracy, thresholds kept from revision 1: BackSlash must beat L1 by a point (a
    # better prior than the fixed Laplace one) and no penalty by two (robustness to pruning); GG
    # init must add a point on top of BackSlash (the paper pairs them).
    comparisons=(
        Comparison(method="backslash", baseline="default", kind="superiority", min_effect=0.02,
                   clause=CLAUSE_VS_NONE, card="backslash"),
        Comparison(method="backslash", baseline="l1", kind="superiority", min_effect=0.01,
                   clause=CLAUSE_VS_L1, card="backslash"),
        Comparison(method="gg_backslash", baseline="backslash", kind="superiority",
                   min_effect=0.01, clause=CLAUSE_GG_ADDS, card="gg-init"),
    ),
    # "minimal performance loss": the unpruned accuracy may not drop by more than two points
    guards=(Guard(metric="test_acc", higher_is_better=True, kind="non-inferiority", margin=0.02,
                  clause=CLAUSE_LITTLE_LOSS),),
    clauses=(CLAUSE_VS_NONE, CLAUSE_VS_L1, CLAUSE_GG_ADDS, CLAUSE_LITTLE_LOSS, CLAUSE_FASTER,
             CLAUSE_ACCURACY),
    untested=(
        Untested(CLAUSE_FASTER, "a verdict compares one metric (pruned accuracy); steps to a "
                                "training-loss target are reported per arm (gg_init vs default)"),
        Untested(CLAUSE_ACCURACY, "a verdict compares one metric (pruned accuracy); unpruned test "
                                  "accuracy is reported per arm (gg_init vs default)"),
    ),
    budget=Budget(unit="epochs", ours=40, paper=None,
                  note=("the paper trains LLMs ('a few' BackSlash epochs, then 'several' plain "
                        "ones), not comparable in epochs; 40 epochs bring the unpenalised MLP to "
                        "its plateau (~98% test accuracy), and every arm gets the same 40")),
    revisions=(
        Revision(2, "fidelity pass (issue 17): official BackSlash from phuang1024/DBS gg_prior/ "
                    "@981a0308 - one pooled shape by table lookup and a step outside the "
                    "optimiser after every batch, then plain fine-tuning (was lam sum |w|^nu "
                    "through Adam, one nu per matrix); L1 is the same step with nu = 1; official "
                    "GG init (shape 2, variance 2/shape[0], zero biases; was shape 1, 1/(3 "
                    "fan_in)); rate grid replaces the lam grid; clauses, guard and budget "
                    "declared before rerunning"),
    ),
    tiers={
        "smoke": {**_COMMON, "hidden": [32], "backslash_epochs": 2, "finetune_epochs": 1,
                  "rate_grid": [10.0]},
        "full": {**_COMMON, "backslash_epochs": 30, "finetune_epochs": 10},
    },
    seeds={"smoke": 2, "full": 8},
    paper_value=("BackSlash (abstract): 60-90% fewer parameters without accuracy loss, "
                 "accuracy kept at 80% pruning; GG init: faster convergence (LLMs)."),
    curves=("pruned_acc_vs_fraction", "train_loss", "val_acc", "pooled_shape"),
    extra_metrics=("test_acc", "val_pruned_acc", "selected_rate", "steps_to_target",
                   "final_shape", "matrix_shape_mean", "deepshape_acc", "deepshape_pruned_acc"),
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


def _train(cfg: dict, seed: int, init_shape, step, rate: float) -> dict:
    data = _data(cfg["dataset"])
    seed_everything(seed)
    model = mlp(data.x_train[0].numel(), list(cfg["hidden"]), data.num_classes)
    if init_shape is not None:
        gg_init_model_(model, init_shape, xi=cfg["gg_xi"],
                       generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    order = torch.Generator().manual_seed(seed)
    n, batch = len(data.y_train), cfg["batch_size"]
    steps_per_epoch = -(-n // batch)

    def batches():
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            yield data.x_train[idx], data.y_train[idx]

    def evaluate(m):
        return {"val_acc": accuracy(m, data.x_val, data.y_val),
                "pooled_shape": lookup_gg_shape(list(m.parameters()))}

    recorder = _StepLosses()
    total = cfg["backslash_epochs"] + cfg["finetune_epochs"]
    # (epochs, adapters) per phase: the rate step, then plain fine-tuning with the same optimiser
    phases = [(total, [recorder])]
    backslash = None
    if step is not None:
        backslash = BackSlash(rate, nu=1.0 if step == "l1" else None)
        phases = [(cfg["backslash_epochs"], [recorder, backslash]),
                  (cfg["finetune_epochs"], [recorder])]
    history: dict[str, list[float]] = {}
    done = 0
    for epochs, adapters in phases:
        part = fit(model, batches, optimizer, F.cross_entropy, epochs=epochs, adapters=adapters,
                   evaluate=evaluate, show_progress=False)
        part["epoch"] = [e + done for e in part["epoch"]]
        for key, values in part.items():
            history.setdefault(key, []).extend(values)
        done += epochs
    model.eval()
    steps, reached = _steps_to_target(recorder.losses, steps_per_epoch, cfg["target_loss"])
    return {"model": model, "rate": rate, "history": history, "steps_to_target": steps,
            "reached_target": reached, "steps_per_epoch": steps_per_epoch,
            "backslash_nu": None if backslash is None else backslash.last_nu,
            "val_pruned_acc": _pruned_accuracy(model, cfg["prune_fraction"],
                                               data.x_val, data.y_val)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    init_shape, step = ARMS[arm]
    grid = cfg["rate_grid"] if step is not None else [0.0]
    sweep = [_train(cfg, seed, init_shape, step, rate) for rate in grid]
    best = max(sweep, key=lambda r: r["val_pruned_acc"])  # first (smallest rate) wins ties
    model, data = best["model"], _data(cfg["dataset"])
    x_test, y_test = data.x_test, data.y_test
    fraction = cfg["prune_fraction"]
    matrix_shapes = [estimate_gg_shape(w) for w in _weights(model)]
    curve_y = [_pruned_accuracy(model, f, x_test, y_test) for f in cfg["curve_fractions"]]
    metrics = {
        "pruned_acc": _pruned_accuracy(model, fraction, x_test, y_test),
        "test_acc": accuracy(model, x_test, y_test),
        "val_pruned_acc": best["val_pruned_acc"],
        "selected_rate": best["rate"],
        "steps_to_target": best["steps_to_target"],
        "final_shape": lookup_gg_shape(list(model.parameters())),
        "matrix_shape_mean": float(np.mean(matrix_shapes)),
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
        "pooled_shape": {"x": steps, "y": history["pooled_shape"]},
    }
    info = {"init_shape": init_shape, "step": step, "matrix_shapes": matrix_shapes,
            "backslash_nu_last": best["backslash_nu"], "reached_target": best["reached_target"],
            "sweep": [{"rate": r["rate"], "val_pruned_acc": r["val_pruned_acc"],
                       "steps_to_target": r["steps_to_target"]} for r in sweep]}
    resolution = {"pruned_acc": 1.0 / len(y_test), "test_acc": 1.0 / len(y_test)}
    tuning = {"rate": {"grid": list(grid), "selected": best["rate"]}} if step is not None else {}
    return RunOutput(metrics=metrics, curves=curves, info=info, resolution=resolution,
                     tuning=tuning)
