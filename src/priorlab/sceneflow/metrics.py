"""Scene-flow evaluation metrics, with the exact definitions of the reference evaluation code.

* :func:`scene_flow_metrics` -- FlowNet3D / NSFP point metrics (NSFP ``utils.py``
  ``scene_flow_metrics``, identical in FastNSF ``optimization.py``).
* :func:`threeway_epe` -- Argoverse 2 scene-flow challenge 2023 / ZeroFlow "3-way EPE"
  (av2-api ``av2/evaluation/scene_flow/eval.py``).
* :func:`bucketed_epe` -- Argoverse 2 challenge 2024 "bucket-normalised EPE" (Khatri, Vedder et al.,
  "I Can't Believe It's Not Scene Flow!", ECCV 2024; code github.com/kylevedder/BucketedSceneFlowEval,
  ``eval/bucketed_epe.py`` and ``datasets/argoverse2/av2_metacategories.py``).

All inputs are numpy-like arrays; every function returns plain Python floats in a dict. Metrics are
computed in float64. Flows are displacements between the two sweeps (metres per frame).
"""

from __future__ import annotations

import warnings

import numpy as np

from priorlab.errors import PriorlabError

__all__ = ["scene_flow_metrics", "threeway_epe", "bucketed_epe", "AV2_CATEGORIES", "BUCKETED_META_CATEGORIES"]

#: AV2 ``AnnotationCategories`` in enum order; flow-label class k (1-based) is
#: ``AV2_CATEGORIES[k-1]``, 0 = none.
AV2_CATEGORIES = (
    "ANIMAL",
    "ARTICULATED_BUS",
    "BICYCLE",
    "BICYCLIST",
    "BOLLARD",
    "BOX_TRUCK",
    "BUS",
    "CONSTRUCTION_BARREL",
    "CONSTRUCTION_CONE",
    "DOG",
    "LARGE_VEHICLE",
    "MESSAGE_BOARD_TRAILER",
    "MOBILE_PEDESTRIAN_CROSSING_SIGN",
    "MOTORCYCLE",
    "MOTORCYCLIST",
    "OFFICIAL_SIGNALER",
    "PEDESTRIAN",
    "RAILED_VEHICLE",
    "REGULAR_VEHICLE",
    "SCHOOL_BUS",
    "SIGN",
    "STOP_SIGN",
    "STROLLER",
    "TRAFFIC_LIGHT_TRAILER",
    "TRUCK",
    "TRUCK_CAB",
    "VEHICULAR_TRAILER",
    "WHEELCHAIR",
    "WHEELED_DEVICE",
    "WHEELED_RIDER",
)
_CAT = {name: i + 1 for i, name in enumerate(AV2_CATEGORIES)}

#: Meta-categories of the 2024 challenge (``BUCKETED_METACATAGORIES``); road signs, ANIMAL and DOG are
#: in none of them and are therefore not evaluated.
BUCKETED_META_CATEGORIES = {
    "BACKGROUND": (0,),
    "CAR": (_CAT["REGULAR_VEHICLE"],),
    "OTHER_VEHICLES": tuple(
        _CAT[k]
        for k in (
            "BOX_TRUCK",
            "LARGE_VEHICLE",
            "RAILED_VEHICLE",
            "TRUCK",
            "TRUCK_CAB",
            "VEHICULAR_TRAILER",
            "ARTICULATED_BUS",
            "BUS",
            "SCHOOL_BUS",
        )
    ),
    "PEDESTRIAN": tuple(_CAT[k] for k in ("PEDESTRIAN", "STROLLER", "WHEELCHAIR", "OFFICIAL_SIGNALER")),
    "WHEELED_VRU": tuple(
        _CAT[k]
        for k in ("BICYCLE", "BICYCLIST", "MOTORCYCLE", "MOTORCYCLIST", "WHEELED_DEVICE", "WHEELED_RIDER")
    ),
}


def _flows(pred, gt):
    try:
        p = np.asarray(pred, dtype=np.float64)
        g = np.asarray(gt, dtype=np.float64)
    except (TypeError, ValueError):
        raise PriorlabError("pred and gt must be numeric (N, 3) flow arrays") from None
    if p.ndim != 2 or p.shape[1] != 3:
        raise PriorlabError(f"pred must have shape (N, 3), got {p.shape}")
    if g.ndim != 2 or g.shape[1] != 3:
        raise PriorlabError(f"gt must have shape (N, 3), got {g.shape}")
    if len(p) != len(g):
        raise PriorlabError(f"pred has {len(p)} vectors but gt has {len(g)}; pass flows for the same points")
    if not (np.isfinite(p).all() and np.isfinite(g).all()):
        raise PriorlabError("pred/gt contain NaN or inf; drop those points with mask=")
    return p, g


def _per_point(x, n, name, dtype=None):
    a = np.asarray(x)
    if a.ndim != 1 or len(a) != n:
        raise PriorlabError(f"{name} must be a 1-D array with one entry per point ({n}), got shape {a.shape}")
    return a.astype(dtype) if dtype is not None else a


def _mask(mask, n):
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask)
    if m.dtype != bool:
        raise PriorlabError(f"mask must be a boolean array, got dtype {m.dtype}; e.g. mask=labels > 0")
    return _per_point(m, n, "mask")


def scene_flow_metrics(pred, gt, mask=None, *, angle: str = "nsfp") -> dict:
    """FlowNet3D/NSFP scene-flow metrics over the points selected by ``mask`` (default: all).

    With ``e_i = |pred_i - gt_i|`` (L2, metres) and relative error ``r_i = e_i / (|gt_i| + 1e-20)``:

    * ``EPE3D`` = mean e_i (end-point error, m);
    * ``Acc5`` ("Acc strict") = fraction with ``e < 0.05 OR r < 0.05``;
    * ``Acc10`` ("Acc relax") = fraction with ``e < 0.1 OR r < 0.1``;
    * ``Outliers`` = fraction with ``e > 0.3 OR r > 0.1`` -- on ego-compensated data (gt ~ 0 for
      static points) r explodes, so this is near 100 % unless nearly perfect;
    * ``angle_error`` (radians): ``angle="nsfp"`` (default) is the official code's
      ``mean acos(clamp(u_pred . u_gt, -1+1e-7, 1-1e-7))`` on unit 3-D flow vectors, a zero vector
      giving NaN that is replaced by dot = 0 (i.e. an angle of pi/2); ``angle="av2"`` is the AV2
      space-time angle, the same on ``(flow, 0.1)`` 4-vectors (0.1 s between sweeps).

    Fractions are in [0, 1]. Raises :class:`PriorlabError` for mismatched shapes or an empty mask.
    """
    p, g = _flows(pred, gt)
    m = _mask(mask, len(p))
    if not m.any():
        raise PriorlabError("mask selects no points; metrics need at least one point")
    p, g = p[m], g[m]
    err = np.linalg.norm(p - g, axis=1)
    gnorm = np.linalg.norm(g, axis=1)
    rel = err / (gnorm + 1e-20)
    out = {
        "EPE3D": float(err.mean()),
        "Acc5": float(((err < 0.05) | (rel < 0.05)).mean()),
        "Acc10": float(((err < 0.1) | (rel < 0.1)).mean()),
        "Outliers": float(((err > 0.3) | (rel > 0.1)).mean()),
    }
    if angle == "nsfp":
        with np.errstate(invalid="ignore", divide="ignore"):
            ug = g / np.linalg.norm(g, axis=1, keepdims=True)
            up = p / np.linalg.norm(p, axis=1, keepdims=True)
            dot = np.clip((ug * up).sum(1), -1 + 1e-7, 1 - 1e-7)
        dot[np.isnan(dot)] = 0.0
        out["angle_error"] = float(np.arccos(dot).mean())
    elif angle == "av2":
        p4 = np.concatenate([p, np.full((len(p), 1), 0.1)], 1)
        g4 = np.concatenate([g, np.full((len(g), 1), 0.1)], 1)
        dot = (
            p4 / np.linalg.norm(p4, axis=1, keepdims=True) * g4 / np.linalg.norm(g4, axis=1, keepdims=True)
        ).sum(1)
        out["angle_error"] = float(np.arccos(np.clip(dot, -1.0, 1.0)).mean())
    else:
        raise PriorlabError(f"unknown angle definition {angle!r}; use 'nsfp' or 'av2'")
    return out


def threeway_epe(pred, gt, classes, dynamic, mask=None, *, return_counts: bool = False) -> dict:
    """Argoverse 2 / ZeroFlow 3-way EPE over the points selected by ``mask`` (e.g. the AV2 eval mask).

    Foreground = ``classes > 0`` (every AV2 annotation category; 0 = background), dynamic = the
    ``dynamic`` label (AV2: |flow - ego-motion flow| >= 0.05 m). ``EPE_FD`` = mean EPE on foreground
    dynamic points, ``EPE_FS`` on foreground static, ``EPE_BS`` on background static (background
    dynamic points are not scored), ``EPE_3way`` = their plain mean. An empty group gives NaN (and
    then ``EPE_3way`` is NaN), as in av2-api. For a dataset, concatenate all frames' points: the
    official count-weighted average of per-frame means equals the pooled mean.
    ``return_counts=True`` adds ``n_FD``, ``n_FS``, ``n_BS``.
    """
    p, g = _flows(pred, gt)
    n = len(p)
    cls = _per_point(classes, n, "classes")
    if cls.dtype.kind not in "iub":
        raise PriorlabError(f"classes must be integer category indices, got dtype {cls.dtype}")
    dyn = _per_point(dynamic, n, "dynamic")
    if dyn.dtype != bool:
        raise PriorlabError(f"dynamic must be a boolean array, got dtype {dyn.dtype}")
    m = _mask(mask, n)
    err = np.linalg.norm(p - g, axis=1)
    fg = cls.astype(np.int64) > 0
    groups = {"FD": m & fg & dyn, "FS": m & fg & ~dyn, "BS": m & ~fg & ~dyn}
    out = {}
    for k, sel in groups.items():
        out[f"EPE_{k}"] = float(err[sel].mean()) if sel.any() else float("nan")
    out["EPE_3way"] = float((out["EPE_FD"] + out["EPE_FS"] + out["EPE_BS"]) / 3)
    if return_counts:
        for k, sel in groups.items():
            out[f"n_{k}"] = int(sel.sum())
    return out


def bucketed_epe(
    pred,
    gt,
    classes,
    *,
    points,
    ego_flow=None,
    mask=None,
    distance_threshold: float = 35.0,
    bucket_max_speed: float = 2.0,
    num_buckets: int = 51,
    meta_categories=None,
) -> dict:
    """Bucket-normalised EPE of the Argoverse 2 2024 scene-flow challenge.

    Points are kept when ``mask`` (optional) holds and ``max(|x|, |y|) < distance_threshold`` (35 m
    box, ``points`` = the first sweep in its ego frame). Each point's speed is ``|gt - ego_flow|``
    (ego-motion-compensated ground truth, metres per 0.1 s frame; pass ``ego_flow=None`` when ``gt`` is
    already compensated). Speeds fall into buckets with edges ``linspace(0, bucket_max_speed,
    num_buckets)`` plus ``inf`` (official: 0, 0.04, ..., 2.0, inf -- 51 buckets; the first,
    [0, 0.04) m/frame i.e. < 0.4 m/s, is "static"). EPE is ``|pred - gt|`` (ego-motion cancels).

    For each meta-category (``BUCKETED_META_CATEGORIES``: BACKGROUND, CAR, OTHER_VEHICLES,
    PEDESTRIAN, WHEELED_VRU; other classes are ignored) and bucket, the mean EPE and mean speed of its
    points are taken; ``static_EPE`` is the static bucket's mean EPE, ``dynamic_normalized_EPE`` is the
    mean over non-empty moving buckets of (mean EPE / mean speed). ``mean_static_EPE`` and
    ``mean_dynamic_normalized_EPE`` are NaN-skipping means over meta-categories (the leaderboard
    numbers). Empty cells are NaN. Concatenating frames gives the official dataset aggregation.

    Returns ``{"classes": {name: {"static_EPE", "dynamic_normalized_EPE", "counts"}},
    "mean_static_EPE", "mean_dynamic_normalized_EPE", "bucket_edges"}``.
    """
    p, g = _flows(pred, gt)
    n = len(p)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2 or len(pts) != n:
        raise PriorlabError(
            f"points must be the (N, 3) first-sweep points matching the {n} flow vectors, "
            f"got shape {pts.shape}"
        )
    cls = _per_point(classes, n, "classes")
    if cls.dtype.kind not in "iu":
        raise PriorlabError(f"classes must be integer AV2 category indices, got dtype {cls.dtype}")
    cls = cls.astype(np.int64)
    m = _mask(mask, n)
    if ego_flow is not None:
        e = np.asarray(ego_flow, dtype=np.float64)
        if e.shape != g.shape:
            raise PriorlabError(f"ego_flow must have the same shape as gt {g.shape}, got {e.shape}")
        speed = np.linalg.norm(g - e, axis=1)
    else:
        speed = np.linalg.norm(g, axis=1)
    if not (isinstance(num_buckets, (int, np.integer)) and num_buckets >= 2) or not bucket_max_speed > 0:
        raise PriorlabError("need num_buckets >= 2 and bucket_max_speed > 0 (official: 51 and 2.0 m/frame)")
    edges = np.concatenate([np.linspace(0.0, float(bucket_max_speed), int(num_buckets)), [np.inf]])
    metas = BUCKETED_META_CATEGORIES if meta_categories is None else meta_categories
    keep = m & (np.abs(pts[:, :2]).max(axis=1) < distance_threshold)
    err = np.linalg.norm(p - g, axis=1)
    bucket = np.searchsorted(edges, speed, side="right") - 1  # edges[b] <= s < edges[b+1]
    nb = len(edges) - 1
    result = {"classes": {}, "bucket_edges": edges.tolist()}
    statics, dynamics = [], []
    for name, ids in sorted(metas.items()):
        sel = keep & np.isin(cls, np.asarray(ids, dtype=np.int64))
        b = bucket[sel]
        counts = np.bincount(b, minlength=nb)[:nb]
        esum = np.bincount(b, weights=err[sel], minlength=nb)[:nb]
        ssum = np.bincount(b, weights=speed[sel], minlength=nb)[:nb]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_e = np.where(counts > 0, esum / np.maximum(counts, 1), np.nan)
            mean_s = np.where(counts > 0, ssum / np.maximum(counts, 1), np.nan)
            norm = mean_e[1:] / mean_s[1:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            dyn = float(np.nanmean(norm)) if np.isfinite(norm).any() else float("nan")
        st = float(mean_e[0])
        result["classes"][name] = {"static_EPE": st, "dynamic_normalized_EPE": dyn, "counts": counts.tolist()}
        statics.append(st)
        dynamics.append(dyn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result["mean_static_EPE"] = float(np.nanmean(statics)) if np.isfinite(statics).any() else float("nan")
        result["mean_dynamic_normalized_EPE"] = (
            float(np.nanmean(dynamics)) if np.isfinite(dynamics).any() else float("nan")
        )
    return result
