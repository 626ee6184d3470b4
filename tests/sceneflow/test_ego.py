"""Ego motion: GICP's estimate refined on the ground (roll, pitch, height), known values and errors."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from priorlab.errors import PriorlabError
from priorlab.sceneflow.ego import estimate_ego_motion, refine_on_ground


def _ring_ground(rng, n_rings=24, per_ring=400):
    """Ground points as a spinning lidar samples them: rings of fixed range, a gentle slope."""
    ranges = np.repeat(np.linspace(3.0, 30.0, n_rings), per_ring)
    azimuth = rng.uniform(-np.pi, np.pi, len(ranges))
    x, y = ranges * np.cos(azimuth), ranges * np.sin(azimuth)
    return np.column_stack([x, y, -1.7 + 0.02 * x + rng.normal(0, 0.005, len(x))])


def _pose(roll=0.0, pitch=0.0, yaw=0.0, t=(0.0, 0.0, 0.0)):
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("xyz", [roll, pitch, yaw]).as_matrix()
    T[:3, 3] = t
    return T


def _transform(points, T):
    return points @ T[:3, :3].T + T[:3, 3]


def _ground_pair(seed=0):
    rng = np.random.default_rng(seed)
    true = _pose(yaw=0.01, t=(0.8, 0.05, 0.0))
    # sweep 2 samples the same surface afresh, seen from the moved sensor
    return _ring_ground(rng), _transform(_ring_ground(rng), true), true


def _displacement(points, A, B):
    return np.linalg.norm(_transform(points, A) - _transform(points, B), axis=1).mean()


def test_a_tilt_and_lift_are_removed_and_yaw_kept():
    g1, g2, true = _ground_pair()
    start = _pose(roll=np.radians(0.2), pitch=np.radians(-0.3), t=(0.0, 0.0, 0.03)) @ true
    refined = refine_on_ground(start, g1, g2)
    before, after = _displacement(g1, start, true), _displacement(g1, refined, true)
    assert before > 0.05 and after < 0.1 * before
    yaw = lambda T: Rotation.from_matrix(T[:3, :3]).as_euler("xyz")[2]  # noqa: E731
    assert abs(yaw(refined) - yaw(start)) < 1e-5


def test_an_aligned_pose_stays_put():
    g1, g2, true = _ground_pair(1)
    assert _displacement(g1, refine_on_ground(true, g1, g2), true) < 2e-3


def test_too_little_ground_leaves_the_pose_unchanged():
    g1, g2, true = _ground_pair(2)
    start = _pose(pitch=0.01) @ true
    np.testing.assert_array_equal(refine_on_ground(start, g1[:2], g2), start)
    np.testing.assert_array_equal(refine_on_ground(start, g1, g2[:10]), start)


def test_a_ground_mask_that_is_not_boolean_is_refused():
    g1, g2, _ = _ground_pair(3)
    with pytest.raises(PriorlabError, match="ground1 must be a boolean mask"):
        estimate_ego_motion(g1, g2, ground1=np.ones(len(g1)), ground2=np.ones(len(g2), bool))
    with pytest.raises(PriorlabError, match="ground2 must be a boolean mask of shape"):
        estimate_ego_motion(g1, g2, ground1=np.ones(len(g1), bool), ground2=np.ones(3, bool))
