"""Reproduction of Wu & Su (seed 24): stable SGD minima obey Tr(H) <= 2/lr and generalise better.

Sparse regression with a diagonal linear network ``b = u*u - v*v`` (d = 100 features, n = 40
samples, 5 nonzero coefficients of size 1 and random sign, noiseless labels), started at
``u = v = 0.5`` where gradient flow finds a dense interpolator. GD (full batch) and single-sample
SGD run at the same learning rates, each with the same linear warm-up; at the end the exact
Hessian gives Tr(H) and lambda_max(H), compared with 2/lr, along with the predictor's l1 norm
and its test error.

Learning rates are fixed as fractions 0.2 / 0.4 / 0.6 of ``1 / (2 ||b*||_1 m)`` with ``m`` the
mean squared feature norm: since ``Tr(H) = 4 sum_j (u_j² + v_j²) m_j >= 4 ||b||_1 m`` (m_j the
feature's mean square), that is the largest rate at which even an interpolator as sparse as b*
can meet SGD's bound, so 2/lr runs from 5 to 1.7 times the sparse solution's trace.

Verdict (revision 2). Besides the test-error comparisons, the paper's bounds are verdict tests:
every SGD arm's ``trace_ratio = lr Tr(H) / 2`` and every GD arm's ``sharpness_ratio =
lr lambda_max(H) / 2`` against the bar 1 (:class:`~priorlab.harness.claim.Bound`), and the
l1 norm is a guard (SGD's lower than GD's, and lower at the larger lr).

The trainer uses the closed-form gradients of the diagonal network in NumPy (a PyTorch loop is
~20x slower at this size; tests check both give the same steps); the Hessian is measured on the
PyTorch module with :func:`priorlab.methods.stability.stability_bound_check`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from priorlab.errors import did_you_mean
from priorlab.harness.claim import Bound, Budget, Claim, Comparison, Guard, Revision, RunOutput
from priorlab.methods.stability import DiagonalLinearNet, stability_bound_check
from priorlab.seed import seed_everything

LR_FRACTIONS = {"lr0.2": 0.2, "lr0.4": 0.4, "lr0.6": 0.6}
ALGORITHMS = ("gd", "sgd")
MIN_EFFECT = 0.05  # test error is relative to ||b*||²: 5% of the signal's energy
CLAUSES = ("minima that single-sample SGD stably reaches satisfy Tr(H) <= 2/lr",
           "GD's stable minima only satisfy lambda_max(H) <= 2/lr",
           "on diagonal linear networks the trace bound caps the l1 norm, so SGD finds sparser "
           "(lower l1 norm) predictors than GD",
           "SGD's predictors generalise better than GD's at the same learning rate",
           "SGD generalises better the larger the learning rate")

CLAIM = Claim(
    seed_id=24,
    method="stability-bound",
    revisions=(Revision(2, "fidelity pass (issue 17): the paper's bounds become verdict tests "
                          "(SGD: lr Tr(H)/2 <= 1, GD: lr lambda_max(H)/2 <= 1, per arm against the "
                          "bar 1) and the l1-norm clause a guard; arms, comparisons and the full "
                          "tier's runs are unchanged; declared before rerunning"),),
    statement=("Minima that single-sample SGD stably reaches satisfy Tr(H) <= 2/lr (GD only "
               "lambda_max(H) <= 2/lr); on diagonal linear networks this caps the l1 norm, so SGD "
               "finds sparser, better-generalising predictors than GD at the same learning rate, "
               "more so as the learning rate grows."),
    setting={
        "smoke": "as full, but 4,000 steps (1,000 warm-up); checks that the pipeline runs.",
        "full": ("Diagonal linear net b = u*u - v*v, init u = v = 0.5 (b = 0), sparse regression "
                 "d=100, n=40, x ~ N(0, I), 5 coefficients of +-1, noiseless labels; test error "
                 "= ||b - b*||² / ||b*||² (the excess test MSE, exact for Gaussian inputs). GD "
                 "(full batch) vs SGD (batch 1, uniform sampling with replacement) at lr = "
                 "{0.2, 0.4, 0.6} x 1/(2 ||b*||_1 m) (about 0.02, 0.04, 0.06), 40,000 steps with a "
                 "linear lr warm-up over the first 10,000 for both (without it SGD diverges from "
                 "this initialisation, whose own trace exceeds 2/lr). Exact Hessian at the end. "
                 "Each seed draws a new data set and sampling order."),
    },
    metric="test_error",
    higher_is_better=False,
    arms=tuple(f"{alg}_{lr}" for lr in LR_FRACTIONS for alg in ALGORITHMS),
    comparisons=(*(Comparison(method=f"sgd_{lr}", baseline=f"gd_{lr}", kind="superiority",
                              min_effect=MIN_EFFECT, clause=CLAUSES[3]) for lr in LR_FRACTIONS),
                 Comparison(method="sgd_lr0.6", baseline="sgd_lr0.2", kind="superiority",
                            min_effect=MIN_EFFECT, clause=CLAUSES[4])),
    # the paper's bounds, bar 1 after dividing by 2/lr; margin 0: "<=" is the paper's, not ours
    bounds=(*(Bound(f"sgd_{lr}", "trace_ratio", bar=1.0, higher_is_better=False,
                    kind="non-inferiority", clause=CLAUSES[0]) for lr in LR_FRACTIONS),
            *(Bound(f"gd_{lr}", "sharpness_ratio", bar=1.0, higher_is_better=False,
                    kind="non-inferiority", clause=CLAUSES[1]) for lr in LR_FRACTIONS)),
    # sparser: a lower l1 norm on every comparison (SGD vs GD, and lr0.6 vs lr0.2), any amount
    guards=(Guard("l1_norm", higher_is_better=False, kind="superiority", min_effect=0.0,
                  clause=CLAUSES[2]),),
    clauses=CLAUSES,
    budget=Budget(unit="steps", ours=40_000, paper=None,
                  note=("no official code, and the paper's step counts for its diagonal-network "
                        "experiments are not available here; every run here ends at an "
                        "interpolating minimum (train loss below 1e-4), so more steps would not "
                        "move the minimum it reached")),
    # float64 quantities of order 1-10 (errors over ||b*||², ratios to 2/lr, l1 norms with
    # ||b*||_1 = 5): differences below 1e-4 are far below the 0.05 min_effect and the bounds' scale
    resolution={"test_error": 1e-4, "trace_ratio": 1e-4, "sharpness_ratio": 1e-4, "l1_norm": 1e-4},
    tiers={
        "smoke": {"dim": 100, "samples": 40, "nonzeros": 5, "init_scale": 0.5, "steps": 4_000,
                  "warmup": 1_000, "log_every": 500},
        "full": {"dim": 100, "samples": 40, "nonzeros": 5, "init_scale": 0.5, "steps": 40_000,
                 "warmup": 10_000, "log_every": 1_000},
    },
    seeds={"smoke": 2, "full": 10},
    paper_value=("Qualitative (no official code): SGD's test error falls as the learning rate "
                 "grows, GD's does not, and SGD minima lie below Tr(H) = 2/lr."),
    curves=("trace_ratio", "l1_norm", "train_loss"),
    extra_metrics=("trace_ratio", "sharpness_ratio", "l1_norm", "trace", "sharpness", "lr",
                   "train_loss", "support_recovered", "diverged"),
)


@functools.lru_cache(maxsize=16)
def _problem(dim: int, samples: int, nonzeros: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, dim))
    b_true = np.zeros(dim)
    support = rng.permutation(dim)[:nonzeros]
    b_true[support] = rng.choice([-1.0, 1.0], size=nonzeros)
    return x, x @ b_true, b_true


def reference_lr(x: np.ndarray, b_true: np.ndarray) -> float:
    """1 / (2 ||b*||_1 m): the largest lr whose SGD trace bound an interpolator as sparse as b* meets."""
    mean_sq_norm = float((x ** 2).mean(0).mean())
    return 1.0 / (2.0 * np.abs(b_true).sum() * mean_sq_norm)


def diagonal_net_step(u, v, x, y, lr):
    """One gradient step of 0.5 * mean (x @ (u² - v²) - y)² on the rows (x, y) given."""
    residual = x @ (u * u - v * v) - y
    grad_b = x.T @ residual / len(y)
    shrink = 2.0 * lr * grad_b  # d/du = 2 u grad_b, d/dv = -2 v grad_b
    return u - shrink * u, v + shrink * v


def _trace(u, v, x) -> float:
    # Tr(H) = (4/n) sum_ij (u_j² + v_j²) x_ij²; the residual term's trace cancels (u² vs -v²)
    return float(4.0 * ((u * u + v * v) * (x ** 2).mean(0)).sum())


def _train(algorithm: str, lr: float, cfg: dict, seed: int, x, y):
    n, d = x.shape
    u = np.full(d, float(cfg["init_scale"]))
    v = u.copy()
    order = np.random.default_rng(seed + 10_000).integers(0, n, cfg["steps"])
    curves = {"trace_ratio": [], "l1_norm": [], "train_loss": [], "step": []}
    for t in range(cfg["steps"]):
        step_lr = lr * min(1.0, (t + 1) / cfg["warmup"])
        if algorithm == "sgd":
            i = order[t]
            u, v = diagonal_net_step(u, v, x[i:i + 1], y[i:i + 1], step_lr)
        else:
            u, v = diagonal_net_step(u, v, x, y, step_lr)
        if (t + 1) % cfg["log_every"] == 0 or t + 1 == cfg["steps"]:
            if not (np.isfinite(u).all() and np.isfinite(v).all()) or np.abs(u).max() > 1e6:
                return None, curves
            b = u * u - v * v
            curves["step"].append(float(t + 1))
            curves["trace_ratio"].append(lr * _trace(u, v, x) / 2)
            curves["l1_norm"].append(float(np.abs(b).sum()))
            curves["train_loss"].append(float(0.5 * ((x @ b - y) ** 2).mean()))
    return (u, v), curves


def _parse_arm(arm: str) -> tuple[str, float]:
    if arm not in CLAIM.arms:
        raise did_you_mean(arm, CLAIM.arms, "arm")
    algorithm, fraction = arm.split("_", 1)
    return algorithm, LR_FRACTIONS[fraction]


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    algorithm, fraction = _parse_arm(arm)
    return _run(algorithm, fraction, cfg, seed)


def _run(algorithm: str, fraction: float, cfg: dict, seed: int) -> RunOutput:
    seed_everything(seed)
    x, y, b_true = _problem(cfg["dim"], cfg["samples"], cfg["nonzeros"], seed)
    lr = fraction * reference_lr(x, b_true)
    result, curves = _train(algorithm, lr, cfg, seed, x, y)
    steps = curves.pop("step")
    curve_out = {name: {"x": steps, "y": values} for name, values in curves.items() if values}
    if result is None:
        # a diverged run has no predictor; it scores as the zero predictor (relative error 1)
        metrics = {"test_error": 1.0, "diverged": 1.0, "lr": lr}
        return RunOutput(metrics=metrics, curves=curve_out, info={"diverged": True})
    u, v = result
    model = DiagonalLinearNet(cfg["dim"])
    with torch.no_grad():
        model.u.copy_(torch.from_numpy(u))
        model.v.copy_(torch.from_numpy(v))
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    report = stability_bound_check(model, lambda out, t: 0.5 * ((out - t) ** 2).mean(),
                                   (inputs, targets), lr=lr)
    b = u * u - v * v
    top = np.argsort(-np.abs(b))[:cfg["nonzeros"]]
    metrics = {
        "test_error": float(((b - b_true) ** 2).sum() / (b_true ** 2).sum()),
        "trace_ratio": report.trace_ratio, "sharpness_ratio": report.sharpness_ratio,
        "trace": report.trace, "sharpness": report.sharpness, "lr": lr,
        "l1_norm": float(np.abs(b).sum()),
        "train_loss": float(0.5 * ((x @ b - y) ** 2).mean()),
        "support_recovered": float(set(top) == set(np.flatnonzero(b_true))),
        "diverged": 0.0,
    }
    info = {"algorithm": algorithm, "lr": lr, "bound_2_over_lr": report.bound,
            "sgd_bound_holds": report.sgd_bound_holds, "gd_bound_holds": report.gd_bound_holds,
            "l1_norm_true": float(np.abs(b_true).sum())}
    return RunOutput(metrics=metrics, curves=curve_out, info=info)
