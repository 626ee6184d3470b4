"""The neural scene-flow prior made rigid (method ``"nsfp+rigid"``).

NSFP fits a smooth flow field but nothing in it says that a car moves as one body or that a wall
does not move at all; the rigid pipeline (:mod:`priorlab.sceneflow.rigid`) knows both but has to
*find* each object's motion by registration, which partial views and fast objects defeat. The
hybrid lets NSFP find the motion and the rigid prior shape it:

1. ego motion (given, or GICP) and ground removal as in ``"rigid"``;
2. NSFP (official settings, ``points`` sampled) on the ego-compensated non-ground points: its field
   is the residual (object) motion;
3. the residual is *projected* onto rigid motions: sweep-1 points are clustered (DBSCAN) and each
   cluster's residual flow is replaced by the best-fitting rigid motion (Kabsch on ``p -> p + f``);
   a cluster, or an unclustered point, whose motion is under ``min_motion`` is snapped to the
   static world (zero residual), which removes NSFP's drift on static structure.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.cluster import DBSCAN

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.sceneflow.preprocess import _as_pose, check_points
from priorlab.sceneflow.rigid import RIGID_DEFAULTS, _ground_masks, _transform, estimate_ego_motion

HYBRID_DEFAULTS = dict(points=8192, cluster_eps=RIGID_DEFAULTS["cluster_eps"],
                       cluster_min_samples=RIGID_DEFAULTS["cluster_min_samples"],
                       min_points=RIGID_DEFAULTS["min_points"], min_motion=RIGID_DEFAULTS["min_motion"])


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    R = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, cd - R @ cs
    return T


def project_rigid(points: np.ndarray, flow: np.ndarray, labels: np.ndarray, *, min_points: int,
                  min_motion: float) -> np.ndarray:
    """Replace each cluster's flow by its best rigid fit, and snap slow clusters/points to zero.

    ``labels``: cluster per point (-1: unclustered). Clusters under ``min_points`` points and
    unclustered points keep their own flow unless it is under ``min_motion`` (m)."""
    out = flow.copy()
    slow = np.linalg.norm(flow, axis=1) < min_motion
    out[slow & (labels < 0)] = 0.0
    for c in np.unique(labels[labels >= 0]):
        rows = labels == c
        if rows.sum() < min_points:
            out[rows & slow] = 0.0
            continue
        T = _kabsch(points[rows], points[rows] + flow[rows])
        moved = _transform(points[rows], T) - points[rows]
        centre = points[rows].mean(0)
        if np.linalg.norm(_transform(centre[None], T)[0] - centre) < min_motion:
            moved[:] = 0.0
        out[rows] = moved
    return out


def estimate_hybrid(pc1, pc2, *, ego_motion=None, ground1=None, ground2=None, seed: int = 0,
                    progress: bool = False, **options):
    """NSFP projected onto rigid motions, as a :class:`~priorlab.sceneflow.estimate.FlowResult`;
    ``options`` override :data:`HYBRID_DEFAULTS` (``points``: NSFP's fitted points per cloud)."""
    from priorlab.sceneflow.estimate import FlowResult, estimate_flow

    unknown = set(options) - set(HYBRID_DEFAULTS)
    if unknown:
        raise did_you_mean(sorted(unknown)[0], sorted(HYBRID_DEFAULTS), "option for method 'nsfp+rigid'")
    opts = {**HYBRID_DEFAULTS, **options}
    start = time.perf_counter()
    p1 = check_points(pc1, "pc1", min_points=3, exact3=True).astype(np.float64)
    p2 = check_points(pc2, "pc2", min_points=3, exact3=True).astype(np.float64)
    estimated = ego_motion is None
    T_ego = estimate_ego_motion(p1, p2) if estimated else _as_pose(ego_motion, "ego_motion")
    g1, g2 = _ground_masks(p1, p2, ground1, ground2)
    if (~g1).sum() < 3 or (~g2).sum() < 3:
        raise PriorlabError("fewer than 3 non-ground points in a sweep: nothing for NSFP to fit")
    moved1 = _transform(p1, T_ego)
    a = moved1[~g1]
    nsfp = estimate_flow(a, p2[~g2], method="nsfp", points=opts["points"], seed=seed, progress=progress)
    labels = np.full(len(p1), -1, dtype=np.int64)
    labels[~g1] = DBSCAN(eps=opts["cluster_eps"], min_samples=int(opts["cluster_min_samples"])).fit_predict(a)
    residual = project_rigid(a, nsfp.field(a).astype(np.float64), labels[~g1],
                             min_points=opts["min_points"], min_motion=opts["min_motion"])
    flow = moved1 - p1
    flow[~g1] += residual
    info = {"ego_motion": T_ego, "ego_estimated": estimated, "labels": labels,
            "nsfp_iterations": nsfp.iterations, "stop_reason": nsfp.info.get("stop_reason")}
    return FlowResult(flow=flow.astype(np.float32), iterations=nsfp.iterations,
                      time_s=time.perf_counter() - start, final_loss=nsfp.final_loss, method="nsfp+rigid",
                      loss_history=nsfp.loss_history, interrupted=nsfp.interrupted, info=info)
