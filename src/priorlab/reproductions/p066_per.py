"""Paper 66, PER: one projection regulariser per symmetry group, strengths tuned automatically.

The official synthetic inertia task (``ModifiedInertia`` in kim-hyunsu/PER
``experiments/datasets.py``): five point masses (softplus of a normal) at normal positions in
R^3; the target is the 3x3 inertia tensor ``I = sum m (|r|^2 1 - r r^T)`` plus ``0.3 I e_z
e_z^T``, which breaks O(3) but keeps every O(2) that fixes the z axis. Arms:

- ``mlp``: a plain SiLU MLP (no equivariance);
- ``exact_o3``: the gated tensor network with every linear map projected onto the O(3)-equivariant
  subspace (EMLP-style exact equivariance to the wrong, too large group);
- ``per_auto``: the same network with free weights started on their O(3) projection, regularised
  by ``sum_i lambda_i R_i`` over the official candidate groups (O(3), O(2) about x, y and z), all
  lambda_i = 100 during a warm-up of a quarter of training, then each divided by
  ``(R_i / min_j R_j)^2`` (official ``AdjustEquiv``). The penalty's gradient step is taken
  outside Adam (``per_decay_``, like AdamW's decoupled weight decay): inside the loss, as
  officially, it dominated Adam's normalisation and left PER far under-trained in our 600 steps
  (``--set decoupled=False`` runs the official form).

Every arm trains with the same Adam learning rate and schedule (as in the official script), and
keeps the best-validation checkpoint from the second half of training (official: after twice the
adjustment epoch). Metric: test MSE. Discovery is measured by ``log10(lambda_z / max(lambda_x,
lambda_y))`` after adjustment: positive when the regulariser of the symmetry that holds stays the
strongest of the three O(2) candidates.
"""

from __future__ import annotations

import copy
import math
from functools import lru_cache

import torch
from torch import nn

from priorlab.errors import did_you_mean
from priorlab.harness.claim import Bound, Budget, Claim, Comparison, RunOutput, Untested
from priorlab.nn.soft_equivariance import (
    AutoStrength,
    GatedTensorMLP,
    TensorRep,
    per_penalties,
    per_decay_,
    project_model_,
)
from priorlab.seed import seed_everything

ARMS = ("mlp", "exact_o3", "per_auto")
GROUPS = ("o3", "o2_x", "o2_y", "o2_z")
N_MASSES = 5

_COMMON = {"n_val": 1000, "n_test": 1000, "noise": 0.3, "channels": [10, 5, 5], "depth": 3,
           "mlp_width": 128, "weight_decay": 2e-4, "init_strength": 100.0, "power": 2.0,
           "eval_every": 10, "init_group": "o3", "decoupled": True,
           # one learning rate for every arm, as in the official script (there 1e-3 for 16,000
           # steps); no per-arm grid: at 200 steps the tensor networks wanted ever larger rates
           # (a grid edge), and the CPU budget buys three times the steps instead
           "lr": 1e-2}

CLAUSE_VS_EXACT = "better accuracy than exact equivariance"
CLAUSE_VS_MLP = "better accuracy than no equivariance"
CLAUSE_DISCOVERY = "the auto-tuned strengths discover which symmetry holds"
CLAUSE_MOTION = "the gains hold on real motion forecasting (Waymo)"

CLAIM = Claim(
    seed_id=66,
    method="per",
    statement=("Training with one projection-based equivariance regulariser per candidate "
               "symmetry group, with strengths tuned automatically from the relative "
               "violations, gives better accuracy than exact equivariance and than no "
               "equivariance on data with mixed approximate symmetries, and the tuned strengths "
               "discover which symmetry holds."),
    setting={
        "smoke": ("inertia task with 100 training points, 20 epochs; checks "
                  "that the pipeline runs."),
        "full": ("official synthetic inertia task (5 masses, target = inertia tensor + 0.3 I e_z "
                 "e_z^T), 500 train / 1000 val / 1000 test points drawn per seed. Gated tensor "
                 "network: 3 blocks of (10 scalars, 5 vectors, 5 matrices), gated SiLU/sigmoid "
                 "nonlinearity plus s u u^T products (stand-in for EMLP's bilinear layer), 16.9k "
                 "parameters; MLP 20-128-128-128-9 SiLU (36.9k). Every arm: Adam lr 1e-2, cosine to 0, "
                 "full batch, 600 steps, weight decay 2e-4 (official, 0.5 wd ||theta||^2 in the loss), "
                 "no per-arm tuning (official: one lr for all models); best-validation checkpoint from "
                 "step 300 on. PER: groups O(3), O(2)_x, O(2)_y, O(2)_z, lambda 100 each, weights "
                 "started on their O(3) projection, the penalty's step taken outside Adam (W -= lr "
                 "lambda (W - P W), decoupled, lr lambda capped at 1), violations observed over steps "
                 "125-149, adjusted at step 150 with power 2. Official: 16,000 steps, ch 384, EMLP "
                 "bilinear layers, penalty inside the Adam loss, random init, lambda_O3 = 0."),
    },
    metric="test_mse",
    higher_is_better=False,
    arms=ARMS,
    # min_effect 0.05 in test MSE, about 1/600 of the targets' per-entry variance (~30): a gain
    # well above rounding that still matters for a surrogate of a physical quantity.
    comparisons=(
        Comparison(method="per_auto", baseline="exact_o3", kind="superiority", min_effect=0.05,
                   clause=CLAUSE_VS_EXACT),
        Comparison(method="per_auto", baseline="mlp", kind="superiority", min_effect=0.05,
                   clause=CLAUSE_VS_MLP),
    ),
    # discovery: lambda of the O(2) that holds must end at least twice the larger of the other two
    # O(2) strengths (log10 2 = 0.301), i.e. the violations differ by a factor sqrt(2) or more.
    bounds=(Bound(arm="per_auto", metric="lambda_z_log_ratio", bar=0.0, higher_is_better=True,
                  kind="superiority", min_effect=math.log10(2.0), clause=CLAUSE_DISCOVERY),),
    clauses=(CLAUSE_VS_EXACT, CLAUSE_VS_MLP, CLAUSE_DISCOVERY, CLAUSE_MOTION),
    untested=(Untested(CLAUSE_MOTION, "no Waymo data offline and no CPU budget for it"),),
    budget=Budget(unit="optimiser steps", ours=600, paper=16000,
                  note=("official inertia runs: 8000 epochs of 2 batches of 500 (1000 points), "
                        "adjusted at epoch 2000; ours 600 full-batch steps on 500 points (CPU)")),
    tiers={
        "smoke": {**_COMMON, "n_train": 100, "n_val": 100, "n_test": 100, "channels": [4, 2, 2],
                  "mlp_width": 16, "epochs": 20, "batch_size": 100},
        "full": {**_COMMON, "n_train": 500, "epochs": 600, "batch_size": 500},
    },
    seeds={"smoke": 2, "full": 8},
    paper_value=("not retrieved (the paper's tables were not reachable here); the abstract "
                 "claims better accuracy than prior approaches and correct discovery of the "
                 "approximate symmetry levels on synthetic tasks and motion forecasting."),
    curves=("val_mse",),
    extra_metrics=("val_mse", "train_mse"),
)


def inertia_data(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x = 5 masses then 5 positions (xyz each), y = 3x3 target flattened row-major."""
    x = torch.randn(n, 4 * N_MASSES, generator=generator)
    x[:, :N_MASSES] = nn.functional.softplus(x[:, :N_MASSES])
    m, r = x[:, :N_MASSES], x[:, N_MASSES:].reshape(n, N_MASSES, 3)
    eye = torch.eye(3)
    inertia = (m[..., None, None] * (r.pow(2).sum(-1)[..., None, None] * eye
                                      - r[..., :, None] * r[..., None, :])).sum(1)
    z = eye[2]
    y = inertia + noise * (inertia @ z)[:, :, None] * z  # breaks O(3) to the O(2)s fixing z
    return x, y.reshape(n, 9)


@lru_cache(maxsize=4)
def _data(seed: int, n_train: int, n_val: int, n_test: int, noise: float):
    gen = torch.Generator().manual_seed(10_000 + seed)
    x, y = inertia_data(n_train + n_val + n_test, noise, gen)
    cut = [n_train, n_train + n_val]
    return (x[:cut[0]], y[:cut[0]]), (x[cut[0]:cut[1]], y[cut[0]:cut[1]]), (x[cut[1]:], y[cut[1]:])


def _model(arm: str, cfg: dict) -> nn.Module:
    if arm == "mlp":
        w = cfg["mlp_width"]
        return nn.Sequential(nn.Linear(4 * N_MASSES, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(),
                             nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 9))
    return GatedTensorMLP(TensorRep((N_MASSES, N_MASSES)), TensorRep((0, 0, 1)),
                          channels=tuple(cfg["channels"]), depth=cfg["depth"],
                          exact="o3" if arm == "exact_o3" else None)


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - y).pow(2).mean())


def _train(arm: str, cfg: dict, seed: int) -> dict:
    (x, y), (xv, yv), _ = _data(seed, cfg["n_train"], cfg["n_val"], cfg["n_test"], cfg["noise"])
    seed_everything(seed)
    model = _model(arm, cfg)
    if arm == "per_auto" and cfg["init_group"]:
        project_model_(model, cfg["init_group"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    epochs, batch = cfg["epochs"], cfg["batch_size"]
    steps = epochs * -(-len(y) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    adjust_at = epochs // 4  # official: adjust_equiv_at = 2000 of 8000 epochs
    observe_from = adjust_at - max(1, adjust_at // 6)
    tuner = AutoStrength({g: cfg["init_strength"] for g in GROUPS}, cfg["power"]) \
        if arm == "per_auto" else None
    order = torch.Generator().manual_seed(seed)
    best, curve = (math.inf, None, -1), {"x": [], "y": []}
    for epoch in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(batch):
            loss = (model(x[idx]) - y[idx]).pow(2).mean()
            loss = loss + 0.5 * cfg["weight_decay"] * sum(p.pow(2).sum() for p in model.parameters())
            if tuner is not None and not cfg["decoupled"]:
                penalties = per_penalties(model, GROUPS)
                loss = loss + sum(tuner.strengths[g] * penalties[g] for g in GROUPS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if tuner is not None and cfg["decoupled"]:
                per_decay_(model, tuner.strengths, schedule.get_last_lr()[0])
            schedule.step()
        if tuner is not None and observe_from <= epoch < adjust_at:
            with torch.no_grad():
                tuner.observe(per_penalties(model, GROUPS))
        if tuner is not None and epoch + 1 == adjust_at:
            tuner.adjust()
        if (epoch + 1) % cfg["eval_every"] == 0 or epoch + 1 == epochs:
            val = _mse(model, xv, yv)
            val = val if math.isfinite(val) else math.inf  # a diverged run is never selected
            curve["x"].append(float(epoch + 1))
            curve["y"].append(val)
            if epoch + 1 > 2 * adjust_at and val < best[0]:
                best = (val, copy.deepcopy(model.state_dict()), epoch + 1)
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return {"model": model, "val_mse": best[0], "best_epoch": best[2], "curve": curve,
            "strengths": None if tuner is None else dict(tuner.strengths),
            "observed": None if tuner is None else dict(tuner.observed)}


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    best = _train(arm, cfg, seed)
    (x, y), _, (xt, yt) = _data(seed, cfg["n_train"], cfg["n_val"], cfg["n_test"], cfg["noise"])
    model = best["model"]
    metrics = {"test_mse": _mse(model, xt, yt), "val_mse": best["val_mse"],
               "train_mse": _mse(model, x, y)}
    info = {"best_epoch": best["best_epoch"]}
    if best["strengths"] is not None:
        lam = best["strengths"]
        metrics["lambda_z_log_ratio"] = math.log10(lam["o2_z"] / max(lam["o2_x"], lam["o2_y"]))
        info.update(strengths=lam, observed_violations=best["observed"])
    # the smallest meaningful MSE step: ~1/3000 of the targets' per-entry variance (~30)
    resolution = {"test_mse": 0.01, "lambda_z_log_ratio": 0.01}
    return RunOutput(metrics=metrics, curves={"val_mse": best["curve"]}, info=info,
                     resolution=resolution)
