"""Reproduction of "What learning algorithm is in-context learning?" (seed 12).

Claim: a transformer trained on in-context linear regression predicts like the Bayes-optimal
learner fitted to the prompt: least squares without label noise, ridge regression with
``lam = sigma^2 / tau^2`` with noise (so its match moves from least squares toward ridge as
noise appears), rather than like one step of gradient descent.

Each seed trains one model per condition (noiseless, noisy) on fresh prompts every step and
scores it on held-out prompts of its own condition by the squared prediction difference (SPD)
to each reference learner, averaged over context sizes 1..n-1 and divided by Var(y) =
tau^2 d + sigma^2. An arm is (condition, reference); all arms of one condition share the run.

Comparisons (superiority, lower SPD is better, min_effect 0 because the claim is an ordering -
which learner the model is closest to - not a size; the interval decides):

- noiseless: least squares closer than one GD step. Least squares *is* the noiseless
  condition's Bayes-optimal ridge (lam = sigma^2 / tau^2 = 0), so there is no separate ridge arm;
- noisy: the Bayes-optimal ridge closer than least squares and than one GD step.

Revision 2 (issue 17): revision 1 also scored the noiseless model against the *noisy* condition's
ridge (lam = 0.25) and required least squares to be closer - a lam chosen for another noise
level. The ridge is now Bayes-optimal for each condition's own noise; at sigma = 0 that is least
squares, and the noiseless_ridge arm and its comparison are gone. The ridge lam the noiseless
model matches best is still reported (``best_ridge_log10_lambda``).

Scale: d = 4, 10 examples, a 2-layer width-32 transformer trained 2,500 steps, far below the
paper's 500k steps of 12-16 layer models; a model this small and this briefly trained may well
sit between the learners. That is the result if so.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from priorlab.data.icl import (gd_predict, icl_regression_batch, ols_predict, prefix_predictions,
                               ridge_predict, squared_prediction_difference)
from priorlab.errors import did_you_mean
from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput
from priorlab.methods.icl import ICLTransformer
from priorlab.seed import seed_everything

CONDITIONS = ("noiseless", "noisy")
# the reference learners scored per condition; at sigma = 0 the Bayes-optimal ridge is least squares
REFERENCES = {"noiseless": ("ols", "gd"), "noisy": ("ols", "ridge", "gd")}
CLAUSES = ("without label noise it predicts like least squares (the Bayes-optimal learner at "
           "sigma = 0) rather than like one step of gradient descent",
           "with label noise it predicts like ridge with lam = sigma^2/tau^2 rather than like "
           "least squares",
           "with label noise it predicts like that ridge rather than like one step of gradient "
           "descent")
WEIGHT_STD = 1.0  # tau: the official sampler's N(0, I) weights
# ridge strengths searched for the one the model matches best (a diagnostic, not a claim)
LAMBDA_GRID = tuple(10.0 ** e for e in np.arange(-3.0, 1.01, 0.25))

CLAIM = Claim(
    seed_id=12,
    method="icl-regression",
    revisions=(Revision(2, "fidelity pass (issue 17): each condition is scored against the ridge "
                          "that is Bayes-optimal for its own noise (lam = sigma^2/tau^2, 0 without "
                          "noise = least squares); the noiseless arm no longer uses the noisy "
                          "condition's lam 0.25, so noiseless_ridge and its comparison are removed; "
                          "declared before rerunning, but after revision 1's results (where that "
                          "comparison failed) were committed"),),
    statement=("A transformer trained for in-context linear regression predicts like the "
               "Bayes-optimal learner on the prompt: least squares without noise, ridge with "
               "lam = sigma^2/tau^2 with noise, rather than one step of gradient descent."),
    setting={
        "smoke": ("d=4, 10 examples, 2-layer width-32 transformer, 150 steps at batch 32; "
                  "checks that the pipeline runs."),
        "full": ("Prompts of 10 examples x ~ N(0, I_4), w ~ N(0, I_4), y = w.x + noise "
                 "(sigma = 0 or 0.5); official interleaved token format; 2 pre-LN layers, width "
                 "32, 4 heads; AdamW lr 3e-3 (betas 0.9/0.98, eps 1e-9), cosine after 20% warm-up, "
                 "2,500 steps of 64 fresh prompts (160k prompts vs the paper's 32M). Evaluated "
                 "on 1,024 held-out prompts per seed against least squares, the condition's "
                 "Bayes-optimal ridge (lam = sigma^2/tau^2: 0.25 with noise; without noise it is "
                 "least squares itself) and one GD step from 0 (step 1/(k+d+1)); SPD averaged "
                 "over context sizes 1-9 and divided by Var(y)."),
    },
    metric="spd",
    higher_is_better=False,
    arms=tuple(f"{c}_{r}" for c in CONDITIONS for r in REFERENCES[c]),
    comparisons=(
        Comparison(method="noiseless_ols", baseline="noiseless_gd", kind="superiority",
                   clause=CLAUSES[0]),
        Comparison(method="noisy_ridge", baseline="noisy_ols", kind="superiority",
                   clause=CLAUSES[1]),
        Comparison(method="noisy_ridge", baseline="noisy_gd", kind="superiority",
                   clause=CLAUSES[2]),
    ),
    clauses=CLAUSES,
    budget=Budget(unit="steps", ours=2500, paper=500_000,
                  note=("training steps of 64 fresh prompts each, ours and the official main.py "
                        "(batch 64, 500k steps); the paper's models are also 6-8x deeper")),
    # SPD is a squared difference divided by Var(y): differences below 1e-4 (a prediction gap of
    # 1% of y's standard deviation) are below what float32 model outputs and 1,024 prompts resolve
    resolution={"spd": 1e-4},
    tiers={
        "smoke": {"dim": 4, "examples": 10, "layers": 2, "hidden": 32, "heads": 4, "steps": 150,
                  "batch": 32, "lr": 3e-3, "warmup": 0.2, "noise_std": 0.5, "eval_prompts": 256},
        "full": {"dim": 4, "examples": 10, "layers": 2, "hidden": 32, "heads": 4, "steps": 2500,
                 "batch": 64, "lr": 3e-3, "warmup": 0.2, "noise_std": 0.5, "eval_prompts": 1024},
    },
    seeds={"smoke": 2, "full": 4},
    paper_value=("Fig. 1-2 of the paper (d = 8, 12-16 layers, 500k steps): SPD to least squares "
                 "near 0 without noise; with noise the model tracks ridge with "
                 "lam = sigma^2/tau^2."),
    curves=("spd_by_context", "train_loss"),
    extra_metrics=("icl_mse", "reference_mse", "best_ridge_log10_lambda"),
)


def _lr_scale(step: int, warmup: int, total: int) -> float:
    """The official schedule: linear warm-up from 0, then half a cosine down to 0."""
    if step <= warmup:
        return step / max(1, warmup)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _references(xs, ys, lam: float) -> dict[str, torch.Tensor]:
    refs = {"ols": prefix_predictions(ols_predict, xs, ys),
            "gd": prefix_predictions(gd_predict, xs, ys, steps=1)}
    if lam > 0:  # at lam = 0 the Bayes-optimal ridge is least squares, already scored
        refs["ridge"] = prefix_predictions(ridge_predict, xs, ys, lam=lam)
    return refs


@functools.lru_cache(maxsize=2)
def _train_and_score(condition: str, cfg_items: tuple, seed: int) -> dict:
    cfg = dict(cfg_items)
    dim, n = cfg["dim"], cfg["examples"]
    noise = 0.0 if condition == "noiseless" else float(cfg["noise_std"])
    # this condition's Bayes-optimal ridge (the posterior mean): 0 without noise
    lam = noise ** 2 / WEIGHT_STD ** 2
    seed_everything(seed)
    model = ICLTransformer(dim, max_examples=n, num_layers=cfg["layers"], hidden=cfg["hidden"],
                           num_heads=cfg["heads"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-9,
                                  weight_decay=0.0)
    steps, warmup = cfg["steps"], int(cfg["warmup"] * cfg["steps"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_scale(s, warmup, steps))
    data = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        batch = icl_regression_batch(cfg["batch"], n, dim, noise_std=noise, weight_std=WEIGHT_STD,
                                     generator=data)
        loss = (model(batch.xs, batch.ys) - batch.ys).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))

    # held-out prompts from a stream the training never touches; references in float64
    test = icl_regression_batch(cfg["eval_prompts"], n, dim, noise_std=noise,
                                weight_std=WEIGHT_STD,
                                generator=torch.Generator().manual_seed(10_000 + seed),
                                dtype=torch.float64)
    with torch.no_grad():
        icl = model(test.xs.float(), test.ys.float()).double()
    variance = WEIGHT_STD ** 2 * dim + noise ** 2
    refs = _references(test.xs, test.ys, lam)

    def normalised_spd(a, b):  # positions 1..n-1: position 0 has no context to learn from
        return squared_prediction_difference(a, b)[1:] / variance

    spd_to_ridge = [float(normalised_spd(icl, prefix_predictions(
        ridge_predict, test.xs, test.ys, lam=grid_lam)).mean()) for grid_lam in LAMBDA_GRID]
    window = max(1, steps // 50)
    return {
        "spd": {r: normalised_spd(icl, p).tolist() for r, p in refs.items()},
        "reference_mse": {r: float(normalised_spd(p, test.ys).mean()) for r, p in refs.items()},
        "icl_mse": float(normalised_spd(icl, test.ys).mean()),
        "best_log10_lambda": float(np.log10(LAMBDA_GRID[int(np.argmin(spd_to_ridge))])),
        "loss_steps": [float(s) for s in range(window, steps + 1, window)],
        "loss_curve": [float(np.mean(losses[s - window:s])) / variance
                       for s in range(window, steps + 1, window)],
        "lam": lam,
    }


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in CLAIM.arms:
        raise did_you_mean(arm, CLAIM.arms, "arm")
    condition, reference = arm.split("_")
    result = _train_and_score(condition, tuple(sorted(cfg.items())), seed)
    by_context = result["spd"][reference]
    metrics = {"spd": float(np.mean(by_context)), "icl_mse": result["icl_mse"],
               "reference_mse": result["reference_mse"][reference],
               "best_ridge_log10_lambda": result["best_log10_lambda"]}
    curves = {"spd_by_context": {"x": [float(k) for k in range(1, len(by_context) + 1)],
                                 "y": by_context},
              "train_loss": {"x": result["loss_steps"], "y": result["loss_curve"]}}
    info = {"condition": condition, "reference": reference, "ridge_lambda": result["lam"],
            "lambda_grid": list(LAMBDA_GRID)}
    return RunOutput(metrics=metrics, curves=curves, info=info)
