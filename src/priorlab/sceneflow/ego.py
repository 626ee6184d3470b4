"""Ego motion between two lidar sweeps: generalised ICP (small_gicp), coarse to fine, then the
tilt and height refined on the ground."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from priorlab.errors import PriorlabError
from priorlab.sceneflow.preprocess import _as_pose, check_mask, check_points


def _registration_library():
    try:
        import small_gicp
    except ImportError:
        raise PriorlabError("estimating the ego motion needs small_gicp: pip install small-gicp "
                            "(or pass ego_motion, a 4x4 pose mapping pc1 into pc2's frame)") from None
    return small_gicp


# coarse-to-fine GICP (downsampling voxel m, max correspondence m): the coarse stage reaches KITTI's
# 1.6 m-per-frame motion from the identity, which a single 1 m stage misses
EGO_STAGES = ((0.5, 3.0), (0.25, 1.0), (0.1, 0.3))


def estimate_ego_motion(pc1, pc2, *, ground1=None, ground2=None, init=None, stages=EGO_STAGES,
                        num_threads: int = 1) -> np.ndarray:
    """The 4x4 rigid transform mapping ``pc1`` onto ``pc2``: generalised ICP (small_gicp) on whole
    sweeps, coarse to fine; with boolean ground masks ``ground1`` / ``ground2`` its roll, pitch and
    height are then refined on the ground (:func:`refine_on_ground`).

    Moving objects are a small share of a sweep, so whole-cloud registration recovers the ego
    motion (refitting on the static points after clustering changed it by < 0.0013 m on the shared
    pairs). ``init`` (4x4) seeds it, e.g. with the previous pair's motion in a sequence. Measured on
    the shared real pairs (mean displacement over the evaluated points against the given poses, GICP
    alone): AV2 0.0126 m, KITTI 0.028 / 0.036 / 0.031 m. Worse there: small_gicp's point-to-plane
    and point-to-point ICP, GICP on non-ground points only, a tighter or finer last stage, and
    KISS-ICP 1.3 on two frames (AV2 0.025-0.048 m; it misses KITTI's 1.1-1.6 m motions from the
    identity, having no previous motion to extrapolate).
    """
    p1 = check_points(pc1, "pc1", min_points=10, exact3=True).astype(np.float64)
    p2 = check_points(pc2, "pc2", min_points=10, exact3=True).astype(np.float64)
    T = np.eye(4) if init is None else _as_pose(init, "init")
    library = _registration_library()
    for voxel, max_correspondence in stages:
        result = library.align(p2, p1, T, registration_type="GICP", downsampling_resolution=voxel,
                               max_correspondence_distance=max_correspondence,
                               num_threads=int(num_threads), max_iterations=30)
        if not result.converged:
            raise PriorlabError("ego-motion registration did not converge; check that the sweeps "
                                "overlap (same sensor, consecutive frames) or pass ego_motion")
        T = np.asarray(result.T_target_source, dtype=np.float64)
    if ground1 is not None and ground2 is not None:
        T = refine_on_ground(T, p1[check_mask(ground1, len(p1), "ground1")],
                             p2[check_mask(ground2, len(p2), "ground2")])
    return T


def refine_on_ground(T, ground1, ground2, *, radius: float = 20.0, neighbours: int = 80,
                     max_residual: float = 0.1, iterations: int = 5) -> np.ndarray:
    """``T`` with its roll, pitch and height corrected so that the sweep-1 ground points within
    ``radius`` m of the sensor lie on the sweep-2 ground: Gauss-Newton on point-to-plane distances,
    the planes fitted to ``neighbours`` sweep-2 ground points (wider than the spacing of the laser
    rings; smaller neighbourhoods see one ring, a line with no defined normal), residuals over
    ``max_residual`` m (curbs, low objects) ignored. Yaw and horizontal translation stay GICP's.
    With too few ground points (under 3 near the sensor, or under ``neighbours`` in sweep 2) or no
    planar patch, ``T`` comes back unchanged.

    Why: GICP on whole sweeps tilts the ground. On the shared AV2 pair its estimate tilts sweep 1's
    ground plane by 0.045 deg (and lifts it 6 mm) against sweep 2's, where the given pose leaves
    0.009 deg; this refinement brings the estimate from 0.0126 m to 0.006 m of the given pose. The
    settings were chosen on that pair; on the KITTI pairs (not used to choose them) it moves the
    estimate from 0.028 / 0.036 / 0.031 m to 0.032 / 0.037 / 0.019 m of the true pose.
    """
    g1, g2 = np.asarray(ground1, dtype=np.float64), np.asarray(ground2, dtype=np.float64)
    g1 = g1[np.linalg.norm(g1[:, :2], axis=1) < radius]
    # sweep 2's ground beyond where sweep 1's near ground can land is never matched
    reach = radius + np.linalg.norm(np.asarray(T)[:2, 3]) + 5.0
    g2 = g2[np.linalg.norm(g2[:, :2], axis=1) < reach]
    if len(g1) < 3 or len(g2) < neighbours:
        return T
    tree = cKDTree(g2)
    _, idx = tree.query(g2, k=neighbours)
    patches = g2[idx] - g2[idx].mean(1, keepdims=True)
    eigenvalues, eigenvectors = np.linalg.eigh(np.einsum("nki,nkj->nij", patches, patches))
    normals = eigenvectors[:, :, 0] * np.sign(eigenvectors[:, 2:3, 0] + 1e-12)
    planar = eigenvalues[:, 0] < 0.01 * eigenvalues[:, 1]
    T = np.array(T, dtype=np.float64)
    for _ in range(iterations):
        moved = g1 @ T[:3, :3].T + T[:3, 3]
        dist, j = tree.query(moved, k=1)
        use = (dist < 0.5) & planar[j]
        n, p = normals[j[use]], moved[use]
        residual = np.einsum("ni,ni->n", n, p - g2[j[use]])
        inlier = np.abs(residual) < max_residual
        if inlier.sum() < 3:
            break
        # d(residual) / d(roll, pitch, height) for a small rotation about the sensor and a lift
        jacobian = np.column_stack([np.cross(p, n)[:, :2], n[:, 2]])[inlier]
        step, *_ = np.linalg.lstsq(jacobian, -residual[inlier], rcond=None)
        correction = np.eye(4)
        correction[:3, :3] = Rotation.from_rotvec([step[0], step[1], 0.0]).as_matrix()
        correction[2, 3] = step[2]
        T = correction @ T
    return T
