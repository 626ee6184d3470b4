"""Paper 1 — Neural Scene Flow Prior: the MLP prior against per-point free flow vectors.

Every arm optimises the same truncated Chamfer objective on the same sampled points; what
differs is the parametrisation of the flow (none, an MLP prior, the fast distance-transform
variant) — so the comparison isolates the prior. Zero flow is the floor.

Data: synthetic lidar pairs (``priorlab.sceneflow.synthetic``; seed = scene and initialisation)
at both tiers; at the full tier also the real Argoverse 2 pair from the shared sample folder
(seed = point sampling and initialisation), raw and ego-motion compensated. Evaluation follows
the NSFP code: metrics on the fitted points of the first cloud within the evaluation mask
(|x|, |y| <= 50 m, not ground); the dense EPE over every evaluation point (the fitted field
queried everywhere; free vectors extended from their nearest fitted point) and the Argoverse
three-way EPE are reported beside it.
"""

from __future__ import annotations

import numpy as np

from priorlab.harness.claim import Budget, Claim, Comparison, Revision, RunOutput, Untested
from priorlab.sceneflow.estimate import estimate_flow
from priorlab.sceneflow.io import av2_sample_pair, load_av2_pair
from priorlab.sceneflow.metrics import scene_flow_metrics, threeway_epe
from priorlab.sceneflow.preprocess import compensate_ego_motion
from priorlab.sceneflow.synthetic import synthetic_pair
from priorlab.seed import seed_everything

SETTINGS = ("syn", "av2", "av2ego")
METHODS = ("zero", "free", "nsfp", "fast")
ARMS = tuple(f"{s}_{m}" for s in SETTINGS for m in METHODS)

# "Decisively": at least 2 cm lower mean EPE, fixed before any run. It is 40% of the 5 cm
# tolerance of Acc5, and the paper's gains over non-prior baselines are several times larger.
MIN_EFFECT_M = 0.02
GRID_LIMIT_BYTES = 4 << 30
CLAUSES = ("an MLP optimised at run time on one pair of point clouds needs no training data",
           "it is a prior that cuts scene-flow end-point error decisively against free per-point "
           "flow vectors optimised on the same Chamfer objective")

CLAIM = Claim(
    seed_id=1,
    method="nsfp",
    statement=("An MLP optimised at run time on one pair of point clouds, with no training data, "
               "is a prior that cuts scene-flow end-point error decisively against optimising "
               "free per-point flow vectors on the same Chamfer objective."),
    setting={
        "smoke": ("Synthetic 16-beam lidar pairs (ego 10 m/s, moving cars and pedestrians), 512 "
                  "fitted points, at most 150 iterations; arms zero / free / NSFP / fast."),
        "full": ("Synthetic 32-beam lidar pairs (seed = scene) and the real Argoverse 2 pair "
                 "(seed = sampling and initialisation), raw and ego-motion compensated with its "
                 "pose; 2048 fitted points from the evaluation mask (|x|,|y| <= 50 m, non-ground; "
                 "ground from the map labels), official NSFP settings (Adam 8e-3, weight decay "
                 "1e-4, <= 5000 iterations, patience 100, lowest-loss iterate), fast variant with "
                 "its official defaults (Adam 8e-3, no weight decay, 0.1 m grid). The verdict "
                 "compares NSFP with free vectors in each setting; the fast variant and zero flow "
                 "are reported beside them."),
    },
    metric="EPE3D",
    higher_is_better=False,
    arms=ARMS,
    comparisons=tuple(Comparison(f"{s}_nsfp", f"{s}_free", "superiority", min_effect=MIN_EFFECT_M,
                                 clause=CLAUSES[1])
                      for s in SETTINGS),
    clauses=CLAUSES,
    revisions=(Revision(2, "fidelity pass (issue 18): the fast arms use FastNSF's current optimiser, "
                           "Adam(lr, weight_decay=0) as in optimization.py from commit a40aac2 on, "
                           "instead of the first release's SGD with weight decay 1e-4; the verdict's "
                           "NSFP-vs-free comparisons are unchanged; declared before rerunning"),),
    untested=(Untested(CLAUSES[0], "true by construction: every arm is fitted to the one pair it is "
                                   "scored on and no arm sees any other data, so there is nothing "
                                   "to measure"),),
    budget=Budget(unit="iterations", ours=5000, paper=5000,
                  note=("at most 5,000 Adam iterations per pair with early stopping (patience "
                        "100), the official config; runs stop earlier when the loss plateaus")),
    # EPE in metres: lidar ranges carry centimetre noise, so differences below 1 mm mean nothing
    # (the bar is 2 cm)
    resolution={"EPE3D": 1e-3},
    tiers={
        "smoke": {"points": 512, "max_iters": 150,
                  "scene": {"n_beams": 16, "azimuth_resolution": 0.8, "n_objects": 8,
                            "n_pedestrians": 4, "max_range": 40.0}},
        "full": {"points": 2048, "max_iters": None, "scene": {}},
    },
    # 3 seeds at the full tier: 12 arms of up to 5000 iterations each must fit the CPU budget.
    seeds={"smoke": 2, "full": 3},
    tier_arms={"smoke": tuple(f"syn_{m}" for m in METHODS)},
    paper_value=("NSFP reports EPE competitive with supervised and self-supervised learners on "
                 "KITTI, Argoverse and nuScenes at 2048 points (the paper's Table 1; not copied "
                 "here, since it could not be checked offline)."),
    extra_metrics=("Acc5", "Acc10", "Outliers", "angle_error", "EPE3D_dense", "EPE_FD", "EPE_FS",
                   "EPE_BS", "EPE_3way", "iterations", "time_s"),
)


def _pair(setting: str, seed: int, cfg: dict) -> dict:
    if setting == "syn":
        return synthetic_pair(seed=seed, **cfg["scene"])
    return load_av2_pair(av2_sample_pair())


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    setting, method = arm.split("_")
    seed_everything(seed)
    pair = _pair(setting, seed, cfg)
    mask = pair["eval_mask"]
    source = pair["pc0"][mask]
    in_box1 = (np.abs(pair["pc1"][:, 0]) <= 50) & (np.abs(pair["pc1"][:, 1]) <= 50)
    target = pair["pc1"][in_box1 & ~pair["is_ground1" if setting == "syn" else "is_ground1_map"]]
    # Compensation moves the first cloud by the known ego motion; the estimate is the residual.
    moved = compensate_ego_motion(source, pair["ego_motion"]) if setting == "av2ego" else source
    prior_flow = moved - source

    info: dict = {}
    if method == "zero":
        residual = np.zeros_like(source)
        fitted = np.random.default_rng(seed).choice(len(source), min(cfg["points"], len(source)),
                                                    replace=False)
        iterations, seconds = 0, 0.0
    else:
        # The 0.1 m grid over the real pair's 100 x 100 x 13 m evaluation box needs ~2.5 GiB;
        # allow it rather than crop the evaluation set differently from the other arms.
        options = {"max_grid_bytes": GRID_LIMIT_BYTES} if method == "fast" else {}
        # centre=False: the official NSFP loaders for KITTI / Argoverse fit in the sensor frame
        # (only FlyingThings3D is centred); centring acts like another first-layer bias draw
        result = estimate_flow(moved, target, method, points=cfg["points"], seed=seed,
                               max_iters=cfg["max_iters"], progress=False, centre=False, **options)
        residual, fitted = result.flow, result.info["fit_indices"]
        iterations, seconds = result.iterations, result.time_s
        info = {"stop_reason": result.info["stop_reason"], "final_loss": result.final_loss,
                "best_iteration": result.best_iteration}
    pred = prior_flow + residual
    gt = pair["flow"][mask]
    metrics = scene_flow_metrics(pred[fitted], gt[fitted])
    metrics["EPE3D_dense"] = scene_flow_metrics(pred, gt)["EPE3D"]
    metrics.update(threeway_epe(pred, gt, pair["classes"][mask], pair["dynamic"][mask]))
    metrics.update(iterations=float(iterations), time_s=float(seconds))
    return RunOutput(metrics=metrics, info=info)
