"""Paper 49, beyond l1 sparse coding in V1: at equal sparsity, l1 codes reconstruct worse.

Olshausen-Field sparse coding of whitened 8x8 natural-image patches (photos bundled with
scikit-learn and scikit-image, see :mod:`priorlab.data.patches`). Each arm is one penalty
(``l1`` soft threshold, ``l0`` hard, ``l_half`` Xu's half threshold, ``cel0``); FISTA infers
the codes and the dictionary (2x overcomplete, unit-norm atoms) is learned by Olshausen-Field
gradient steps, separately per arm. Equal sparsity, the paper's comparison: every arm learns one
dictionary per lam on a grid of the same size (lam set so the operator zeroes |u| <= kill at
unit step, the same kill grid for every arm) and keeps the dictionary whose validation codes'
fraction of nonzeros is closest to the target; then the inference lam is set by bisection so
the validation codes hit the target exactly, and the metric is the test patches' normalised
reconstruction error sum ||x - D a||^2 / sum ||x||^2 at that lam (lower is better). The
learned atoms' orientation selectivity (2-D Fourier energy) and localisation are measured too.
"""

from __future__ import annotations

import math

import torch

from priorlab.data.patches import sample_patches
from priorlab.errors import did_you_mean
from priorlab.functional.sparse_coding import (
    dictionary_image,
    dictionary_step,
    lam_for_threshold,
    localisation,
    normalise_columns,
    orientation_selectivity,
    sparse_code,
)
from priorlab.harness.claim import Bound, Budget, Claim, Comparison, RunOutput, Untested
from priorlab.seed import seed_everything

ARMS = ("l1", "l0", "l_half", "cel0")

_COMMON = {"patch_size": 8, "n_atoms": 128, "batch_size": 256, "lr": 1.0, "target_sparsity": 0.05,
           "n_train": 20000, "n_val": 2000, "n_test": 5000, "bisection_steps": 10,
           "eval_steps": 150, "osi_oriented": 0.5, "local_window": 5, "local_share": 0.75}

CLAUSE_L1_WORSE = "at equal sparsity, l1 reconstructs worse than l0"
CLAUSE_HALF = "at equal sparsity, l1 reconstructs worse than the l1/2 threshold"
CLAUSE_CEL0 = "at equal sparsity, l1 reconstructs worse than CEL0"
CLAUSE_DENSER = "l1 needs denser codes (or more atoms) for the same reconstruction error"
CLAUSE_ORIENTED = "for every penalty a subset of atoms becomes oriented and localised (V1-like)"
CLAUSE_VARIED = "sparse enough codes develop receptive fields of varied functionality"
CLAUSE_V1 = "V1's sparsity is closer to l0 than to l1"

CLAIM = Claim(
    seed_id=49,
    method="sparse-coding-v1",
    statement=("In Olshausen-Field sparse coding of natural images, thresholds approximating "
               "l_q with q < 1 (hard/l0, l1/2, CEL0) reconstruct better than l1's soft "
               "threshold at equal sparsity (l1 needs denser codes or more atoms for the same "
               "error); with every penalty a subset of atoms becomes oriented and localised "
               "like V1 receptive fields, with varied functionality when sparse enough; so V1's "
               "sparsity is closer to l0 than to l1."),
    setting={
        "smoke": ("200 whitened 8x8 patches, 32 atoms, 3 dictionary steps, two kills; checks "
                  "that the pipeline runs."),
        "full": ("Whitened 8x8 patches (Olshausen-Field filter, f0 = 0.4 cycles/pixel) from 10 "
                 "bundled photos, rows split 60/20/20 into train/val/test; 128 atoms (2x "
                 "overcomplete); per arm and kill in {0.6, 0.9, 1.3, 2.0} (lam zeroing |u| <= kill): "
                 "200 Olshausen-Field steps (batch 256, FISTA 40 steps, lr 1, unit-norm "
                 "columns); the dictionary whose 2,000 validation codes are closest to 5% "
                 "nonzeros is kept, the inference lam bisected (10 steps) to 5% on validation, "
                 "and 5,000 test patches coded with 150 FISTA steps. Oriented: Fourier "
                 "orientation selectivity >= 0.5; localised: >= 75% of the atom's energy in "
                 "some 5x5 window."),
    },
    metric="test_nmse",
    higher_is_better=False,
    arms=ARMS,
    # 0.02 of the patch energy: a reconstruction difference one can see in the patches; the
    # paper plots its errors without a threshold.
    comparisons=(
        Comparison(method="l0", baseline="l1", min_effect=0.02, clause=CLAUSE_L1_WORSE),
        Comparison(method="l_half", baseline="l1", min_effect=0.02, clause=CLAUSE_HALF),
        Comparison(method="cel0", baseline="l1", min_effect=0.02, clause=CLAUSE_CEL0),
    ),
    # "a subset of the neurons": at least a quarter of the atoms oriented and localised
    bounds=tuple(Bound(arm=arm, metric="oriented_localised_fraction", bar=0.25,
                       higher_is_better=True, clause=CLAUSE_ORIENTED) for arm in ARMS),
    clauses=(CLAUSE_L1_WORSE, CLAUSE_HALF, CLAUSE_CEL0, CLAUSE_DENSER, CLAUSE_ORIENTED,
             CLAUSE_VARIED, CLAUSE_V1),
    untested=(
        Untested(CLAUSE_DENSER, "the same trade-off read the other way; the error-vs-sparsity "
                                "curve per arm (val_error_vs_sparsity) shows it, no verdict"),
        Untested(CLAUSE_VARIED, "'varied functionality' has no measure here beyond orientation "
                                "and localisation"),
        Untested(CLAUSE_V1, "an interpretation about the brain; no neural data here"),
    ),
    budget=Budget(unit="dictionary steps", ours=200, paper=None,
                  note=("the paper's number of learning iterations could not be retrieved (no "
                        "official code found); 200 steps of 256 patches give oriented atoms "
                        "and every arm gets the same")),
    tiers={
        "smoke": {**_COMMON, "n_atoms": 32, "n_train": 2000, "n_val": 200, "n_test": 200,
                  "learn_steps": 3, "code_steps": 10, "eval_steps": 20, "bisection_steps": 3,
                  "kill_grid": [1.0, 2.0]},
        # kill grid from a one-seed pilot of {0.6, 1.2, 2.4}: 5% nonzeros lies near kill 0.85
        # (l1/2), 1.0 (l0, CEL0) and 1.45 (l1), so every arm's choice should be inside the grid
        "full": {**_COMMON, "learn_steps": 200, "code_steps": 40,
                 "kill_grid": [0.6, 0.9, 1.3, 2.0]},
    },
    seeds={"smoke": 2, "full": 5},
    paper_value=("the paper plots error against sparsity: soft thresholding reaches a given "
                 "sparsity 'at the expense of much degraded reconstruction'; no single number."),
    curves=("val_error_vs_sparsity", "train_nmse"),
    extra_metrics=("test_sparsity", "oriented_fraction", "localised_fraction",
                   "oriented_localised_fraction", "selected_kill", "inference_kill"),
)


def _nmse(x: torch.Tensor, dictionary: torch.Tensor, codes: torch.Tensor) -> float:
    return float(((x - codes @ dictionary.T) ** 2).sum() / (x ** 2).sum())


def _sparsity(codes: torch.Tensor) -> float:
    return float((codes != 0).float().mean())


def _learn(arm: str, kill: float, cfg: dict, train: torch.Tensor, seed: int):
    generator = torch.Generator().manual_seed(seed)
    dictionary = normalise_columns(torch.randn(train.shape[1], cfg["n_atoms"],
                                               generator=generator))
    lam = lam_for_threshold(arm, kill)
    history = []
    for _ in range(cfg["learn_steps"]):
        batch = train[torch.randint(len(train), (cfg["batch_size"],), generator=generator)]
        codes = sparse_code(batch, dictionary, penalty=arm, lam=lam, steps=cfg["code_steps"])
        history.append(_nmse(batch, dictionary, codes))
        dictionary = dictionary_step(batch, dictionary, codes, cfg["lr"])
    return dictionary, history


def _code(arm: str, kill: float, x: torch.Tensor, dictionary: torch.Tensor,
          cfg: dict) -> torch.Tensor:
    return sparse_code(x, dictionary, penalty=arm, lam=lam_for_threshold(arm, kill),
                       steps=cfg["eval_steps"])


def _bisect_kill(arm: str, dictionary: torch.Tensor, val: torch.Tensor, cfg: dict,
                 start: float) -> float:
    """The kill (in log space) whose validation codes have the target fraction of nonzeros."""
    low, high = math.log(start / 16.0), math.log(start * 16.0)
    for _ in range(cfg["bisection_steps"]):
        mid = 0.5 * (low + high)
        if _sparsity(_code(arm, math.exp(mid), val, dictionary, cfg)) > cfg["target_sparsity"]:
            low = mid
        else:
            high = mid
    return math.exp(0.5 * (low + high))


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    seed_everything(seed)
    size = cfg["patch_size"]
    train = sample_patches("train", cfg["n_train"], size, seed=seed).x
    val = sample_patches("val", cfg["n_val"], size, seed=seed).x
    test = sample_patches("test", cfg["n_test"], size, seed=seed).x
    target = cfg["target_sparsity"]
    sweep = []
    for kill in cfg["kill_grid"]:
        dictionary, history = _learn(arm, kill, cfg, train, seed)
        val_sparsity = _sparsity(_code(arm, kill, val, dictionary, cfg))
        sweep.append({"kill": kill, "dictionary": dictionary, "history": history,
                      "val_sparsity": val_sparsity})
    # closest in log sparsity; the first (smallest kill) wins ties
    best = min(sweep, key=lambda s: abs(math.log(max(s["val_sparsity"], 1e-6) / target)))
    dictionary = best["dictionary"]
    kill = _bisect_kill(arm, dictionary, val, cfg, best["kill"])
    codes = _code(arm, kill, test, dictionary, cfg)
    osi = orientation_selectivity(dictionary, size)
    local = localisation(dictionary, size, cfg["local_window"])
    oriented, localised = osi >= cfg["osi_oriented"], local >= cfg["local_share"]
    # validation error against validation sparsity around the chosen kill (the trade-off curve)
    curve = [_code(arm, kill * f, val, dictionary, cfg) for f in (0.5, 0.7, 1.0, 1.4, 2.0)]
    metrics = {
        "test_nmse": _nmse(test, dictionary, codes),
        "test_sparsity": _sparsity(codes),
        "oriented_fraction": float(oriented.mean()),
        "localised_fraction": float(localised.mean()),
        "oriented_localised_fraction": float((oriented & localised).mean()),
        "selected_kill": best["kill"],
        "inference_kill": kill,
    }
    curves = {
        "val_error_vs_sparsity": {"x": [_sparsity(c) for c in curve],
                                  "y": [_nmse(val, dictionary, c) for c in curve]},
        "train_nmse": {"x": [float(i) for i in range(len(best["history"]))],
                       "y": best["history"]},
    }
    info = {"sweep": [{"kill": s["kill"], "val_sparsity": s["val_sparsity"]} for s in sweep],
            "osi": osi.round(3).tolist(), "localisation": local.round(3).tolist()}
    if seed == 0:
        info["dictionary_image"] = dictionary_image(dictionary, size).round(3).tolist()
    resolution = {"test_nmse": 1e-3, "oriented_localised_fraction": 1.0 / cfg["n_atoms"]}
    tuning = {"kill": {"grid": list(cfg["kill_grid"]), "selected": best["kill"]}}
    return RunOutput(metrics=metrics, curves=curves, info=info, resolution=resolution,
                     tuning=tuning)
