"""One cluster of the rigid scene-flow prior (:mod:`priorlab.sceneflow.rigid`): its registration
between the two sweeps in bird's-eye view, and the decision whether it moves."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree


def kabsch_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2-D rigid transform (3x3 homogeneous) taking ``src`` rows onto ``dst`` rows."""
    cs, cd = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    R = vt.T @ np.diag([1.0, d]) @ u.T
    T = np.eye(3)
    T[:2, :2], T[:2, 2] = R, cd - R @ cs
    return T


def apply_2d(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return points @ T[:2, :2].T + T[:2, 2]


def _mean_nn(tree: cKDTree, points: np.ndarray, cap: float) -> float:
    if len(points) == 0:
        return cap
    dist, _ = tree.query(points, k=1, distance_upper_bound=cap)
    return float(np.minimum(dist, cap).mean())


class ClusterPair:
    """One cluster's registration problem in bird's-eye view (z up).

    ``src``: its sweep-1 points (ego-compensated, xy); ``dst``: the sweep-2 points of the same
    cluster (xy). ``tau_src`` / ``tau_dst``: each point's capture time within its sweep as a fraction
    of the sweep interval (zeros when unknown). A rig of two lidars half a turn out of phase (Argoverse
    2) sees a moving car twice per sweep, 50 ms apart: matching one lidar's points to the other's
    gives half or one and a half times the true motion, and a nearest-neighbour score prefers those.
    Points are therefore matched in (x, y, ``time_weight`` * tau): points captured at different
    phases of the sweep are far apart, points of one spinning lidar (same phase in both sweeps for an
    object) match as in plain 2-D.
    """

    def __init__(self, src, tau_src, dst, tau_dst, cap: float, time_weight: float):
        self.src, self.cap = src, cap
        self.src_time = time_weight * tau_src[:, None]
        self.dst = np.hstack([dst, time_weight * tau_dst[:, None]])
        self.tree = cKDTree(self.dst)
        self.tau_src, self.tau_dst = tau_src[:, None], tau_dst[:, None]
        self.timed = bool(tau_src.any() or tau_dst.any())

    def moved(self, T: np.ndarray) -> np.ndarray:
        return np.hstack([apply_2d(self.src, T), self.src_time])

    def error(self, T: np.ndarray) -> float:
        """Symmetric mean capped nearest-neighbour distance (m) of the moved cluster: forward over
        its points, backward over the sweep-2 points (both are needed: forward alone lets a car
        slide along its own side)."""
        s = self.moved(T)
        return 0.5 * (_mean_nn(self.tree, s, self.cap) + _mean_nn(cKDTree(s), self.dst, self.cap))

    def deskewed(self, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both copies at their sweep's reference time if the object moves by ``T`` per sweep
        interval: a point captured ``tau`` intervals into its sweep is moved back by ``tau`` of the
        motion (the object kept moving while the sweep went round; ego-motion compensation does not
        undo that). Returns (sweep-1 points at sweep 1's time, sweep-2 points at sweep 2's time)."""
        dst = self.dst[:, :2]
        return (self.src - self.tau_src * (apply_2d(self.src, T) - self.src),
                dst - self.tau_dst * (apply_2d(dst, T) - dst))

    def deskewed_error(self, T: np.ndarray) -> float:
        src, dst = self.deskewed(T)
        moved = apply_2d(src, T)
        return 0.5 * (_mean_nn(cKDTree(dst), moved, self.cap) + _mean_nn(cKDTree(moved), dst, self.cap))


def _candidate_translations(src, dst, opts, rng) -> np.ndarray:
    """Peaks of the 2-D histogram of displacements dst_j - src_i (ICP-Flow's vote) between points
    (x, y, weighted time) captured at a similar phase of their sweeps, each refined to the median of
    the votes around it."""
    n = opts["max_vote_points"]
    s = src[rng.choice(len(src), n, replace=False)] if len(src) > n else src
    d = dst[rng.choice(len(dst), n, replace=False)] if len(dst) > n else dst
    disp = (d[None, :, :] - s[:, None, :]).reshape(-1, 3)
    limit, size = opts["max_translation"], opts["bin_size"]
    disp = disp[(np.abs(disp[:, 0]) <= limit) & (np.abs(disp[:, 1]) <= limit)
                & (np.abs(disp[:, 2]) <= opts["max_correspondence"])][:, :2]
    if not len(disp):
        return np.zeros((0, 2))
    edges = np.arange(-limit, limit + size, size)
    hist, _, _ = np.histogram2d(disp[:, 0], disp[:, 1], bins=(edges, edges))
    peaks = (hist == maximum_filter(hist, size=5)) & (hist > 0)
    ix, iy = np.nonzero(peaks)
    out = []
    for k in np.argsort(hist[ix, iy])[::-1][:opts["vote_peaks"]]:
        cx, cy = edges[ix[k]] + size / 2, edges[iy[k]] + size / 2
        near = (np.abs(disp[:, 0] - cx) <= size) & (np.abs(disp[:, 1] - cy) <= size)
        out.append(np.median(disp[near], axis=0))
    return np.asarray(out)


def _translation(t) -> np.ndarray:
    T = np.eye(3)
    T[:2, 2] = t
    return T


def register(cluster: ClusterPair, opts: dict, rng) -> tuple[np.ndarray, float, float]:
    """The cluster's rigid motion over the sweep interval: ``(T 3x3, error, static_error)``.

    Registration is 2-D (yaw + horizontal translation): the two sweeps hit an object with different
    laser rings, so in 3-D a wrong vertical shift that lines the rings up beats the true motion, and
    objects do not move vertically in 0.1 s. The best voted translation seeds point-to-point ICP on
    (x, y, time) points; ICP's result is kept only when it lowers the symmetric error.
    """
    static_error = cluster.error(np.eye(3))
    best, best_err = np.eye(3), static_error
    for t in _candidate_translations(cluster.moved(np.eye(3)), cluster.dst, opts, rng):
        T = _translation(t)
        err = cluster.error(T)
        if err < best_err:
            best, best_err = T, err
    if best_err >= static_error:
        return best, best_err, static_error
    T = best.copy()
    for _ in range(opts["icp_iters"]):
        moved = cluster.moved(T)
        dist, idx = cluster.tree.query(moved, k=1)
        inliers = dist < opts["max_correspondence"]
        if inliers.sum() < 3:
            break
        step = kabsch_2d(moved[inliers, :2], cluster.dst[idx[inliers], :2])
        T = step @ T
        if np.linalg.norm(step[:2, 2]) < 1e-4 and abs(step[1, 0]) < 1e-6:
            break
    refined = cluster.error(T)
    if refined < best_err:
        best, best_err = T, refined
    if cluster.timed:
        best = _refine_deskewed(cluster, best, opts)
    return best, best_err, static_error


def _refine_deskewed(cluster: ClusterPair, T: np.ndarray, opts: dict) -> np.ndarray:
    """ICP on de-skewed copies (:meth:`ClusterPair.deskewed`, which depend on the motion itself), from
    the motion found without de-skewing; kept only if it lowers the de-skewed error. The decision
    that the cluster moves rests on the plain error: de-skewing refines the motion, it does not find
    one (as a search it admits spurious large motions of small clusters)."""
    start, refined = cluster.deskewed_error(T), T
    for _ in range(opts["icp_iters"]):
        src, dst = cluster.deskewed(refined)
        dist, idx = cKDTree(dst).query(apply_2d(src, refined), k=1)
        inliers = dist < opts["max_correspondence"]
        if inliers.sum() < 3:
            break
        update = kabsch_2d(src[inliers], dst[idx[inliers]])
        done = np.abs(update - refined).max() < 1e-5
        refined = update
        if done:
            break
    return refined if cluster.deskewed_error(refined) < start else T


def is_motion(T: np.ndarray, src: np.ndarray, error: float, static_error: float, opts: dict) -> bool:
    angle = np.degrees(abs(np.arctan2(T[1, 0], T[0, 0])))
    centre = src.mean(0)
    shift = np.linalg.norm(apply_2d(centre[None], T)[0] - centre)
    return (angle <= opts["max_rotation_deg"] and opts["min_motion"] <= shift <= opts["max_translation"]
            and error < static_error)


def rides_with_the_sensor(T: np.ndarray, src: np.ndarray, sensor_xy: np.ndarray, ego_shift: float,
                           opts: dict) -> bool:
    """Whether motion ``T`` of a cluster is the sampling artefact of a static surface parallel to the
    travel (a wall, a guardrail): the beams hit such a surface at the same places relative to the
    sensor in both sweeps, so shifted along itself by the ego's own displacement its samples line up
    better than where it truly is, and the nearest-neighbour score prefers that. The artefact: a
    line-like cluster (elongation, the ratio of its bird's-eye principal spreads, at least
    ``line_elongation``) moved along its own axis (cosine >= 0.9) so that it stays where it was in
    the sensor frame (its centre's sensor-frame motion under ``locked_share`` of the ego shift).
    ``sensor_xy``: the cluster's sweep-1 points in sweep 1's sensor frame. Given up with it: a
    vehicle seen side-on driving beside the ego at exactly its speed (a car ahead or behind at the
    same speed is kept: its visible side is across the travel)."""
    centre = src.mean(0)
    centred = src - centre
    spreads, axes = np.linalg.eigh(centred.T @ centred / len(src))
    if spreads[1] < opts["line_elongation"] ** 2 * max(spreads[0], 1e-12):
        return False
    moved_centre = apply_2d(centre[None], T)[0]
    step = moved_centre - centre
    if abs(step @ axes[:, 1]) < 0.9 * np.linalg.norm(step):
        return False
    return np.linalg.norm(moved_centre - sensor_xy.mean(0)) < opts["locked_share"] * ego_shift
