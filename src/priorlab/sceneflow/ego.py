"""Ego motion between two lidar sweeps by generalised ICP (small_gicp), coarse to fine."""

from __future__ import annotations

import numpy as np

from priorlab.errors import PriorlabError
from priorlab.sceneflow.preprocess import _as_pose, check_points


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


def estimate_ego_motion(pc1, pc2, *, init=None, stages=EGO_STAGES, num_threads: int = 1) -> np.ndarray:
    """The 4x4 rigid transform mapping ``pc1`` onto ``pc2``: generalised ICP (small_gicp) on whole
    sweeps, coarse to fine.

    Moving objects are a small share of a sweep, so whole-cloud registration recovers the ego
    motion. ``init`` (4x4) seeds it, e.g. with the previous pair's motion in a sequence. Measured on
    the shared real pairs (mean displacement error against the given poses): AV2 0.014 m, KITTI
    0.018 / 0.029 / 0.018 m; small_gicp's point-to-plane and point-to-point ICP were worse.
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
    return T
