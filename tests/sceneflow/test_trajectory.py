"""Long-term: integrating exact fields gives exact trajectories; accumulation collapses static scenes."""

import math

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow.synthetic import make_scene, synthetic_sequence
from priorlab.sceneflow.trajectory import (
    FittedField,
    accumulate,
    as_poses,
    field_from_result,
    integrate_trajectories,
    invert_field,
    to_own,
    to_reference,
    trajectory_endpoint_error,
    transform,
)


def _rigid(yaw, t):
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = t
    return T


def _rigid_field(T):
    return lambda x: (np.asarray(x, np.float64) @ T[:3, :3].T + T[:3, 3] - x).astype(np.float32)


def test_exact_rigid_field_gives_exact_trajectories():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-20, 20, (500, 3)).astype(np.float32)
    T = _rigid(0.05, [1.0, 0.2, 0.0])
    clouds = [pts] * 5  # only the count matters when fields are given
    traj = integrate_trajectories(clouds, [_rigid_field(T)] * 4, progress=False)
    assert traj.shape == (5, 500, 3)
    Tk = np.eye(4)
    for k in range(5):
        np.testing.assert_allclose(traj[k], transform(pts, Tk), atol=1e-4)
        Tk = T @ Tk


def _exact_scene_fields(seq):
    """Pair k's exact field, valid at frame 0's transported points (what integration queries)."""
    scene, f0 = seq.scene, seq.frames[0]
    return [
        (lambda x, k=k: (scene.transport(x, f0.hit, k * scene.dt, (k + 1) * scene.dt) - x).astype(np.float32))
        for k in range(len(seq) - 1)
    ]


def test_integrating_true_synthetic_fields_reproduces_true_trajectories():
    seq = synthetic_sequence(5, seed=3, object_yaw_rate=0.4)
    traj = integrate_trajectories(seq, _exact_scene_fields(seq), progress=False)
    np.testing.assert_allclose(traj, seq.trajectories, atol=2e-4)
    err = trajectory_endpoint_error(traj, seq.trajectories)
    assert err.shape == (5,) and err.max() < 2e-4


def test_estimator_path_and_poses():
    seq = synthetic_sequence(4, seed=0, n_objects=0, n_pedestrians=0)
    calls = []

    def zero_estimator(a, b):  # static scene after ego compensation: residual flow is 0
        calls.append((len(a), len(b)))
        return np.zeros_like(a)  # a flow array -> nearest-neighbour interpolated field

    traj = integrate_trajectories(seq, zero_estimator, poses=seq.poses, progress=False)
    assert len(calls) == 3
    np.testing.assert_allclose(traj, seq.trajectories, atol=1e-4)
    ref = integrate_trajectories(seq, zero_estimator, poses=seq.poses, reference=True, progress=False)
    np.testing.assert_allclose(ref, to_reference(seq.trajectories, seq.poses), atol=1e-4)
    np.testing.assert_allclose(to_own(ref, seq.poses), traj, atol=1e-4)


def test_accumulate_static_scene_with_poses_collapses():
    scene = make_scene(2, n_objects=0, n_pedestrians=0, range_noise=0.0, ego_yaw_rate=0.3)
    seq = scene.sequence(4)
    cloud = accumulate(seq, poses=seq.poses, progress=False)
    assert cloud.shape == (sum(len(f) for f in seq), 4)
    assert set(np.unique(cloud[:, 3]).astype(int)) == {0, 1, 2, 3}
    hits = np.concatenate([f.hit for f in seq])
    # every sweep, brought into frame 0, lies on frame 0's surfaces
    assert scene.surface_distance(cloud[:, :3], hits, 0.0).max() < 1e-3
    # the same with exact flow fields instead of poses: forward fields (inverted) and backward fields
    fwd = [
        (lambda x, E=f.ego_motion: (x @ E[:3, :3].T + E[:3, 3] - x).astype(np.float32))
        for f in seq.frames[:-1]
    ]
    via_fwd = accumulate(seq, fwd, progress=False)
    np.testing.assert_allclose(via_fwd, cloud, atol=1e-3)
    bwd = [
        (lambda x, E=np.linalg.inv(f.ego_motion): (x @ E[:3, :3].T + E[:3, 3] - x).astype(np.float32))
        for f in seq.frames[:-1]
    ]
    via_bwd = accumulate(seq, backward_fields=bwd, progress=False)
    np.testing.assert_allclose(via_bwd, cloud, atol=1e-3)


def test_accumulate_moving_objects_with_exact_backward_estimator():
    scene = make_scene(4, range_noise=0.0)
    seq = scene.sequence(2)
    f1 = seq.frames[1]
    calls = []

    def exact_backward(a, b):  # estimator called as (frame 1, frame 0): the scene's exact backward flow
        calls.append(a is f1.points or np.array_equal(a, f1.points))
        return (scene.transport(a, f1.hit, f1.time, f1.time - scene.dt) - a).astype(np.float32)

    cloud = accumulate(seq, exact_backward, progress=False)
    assert calls == [True]
    hits = np.concatenate([f.hit for f in seq])
    # moving objects land exactly on frame 0's surfaces ...
    assert scene.surface_distance(cloud[:, :3], hits, 0.0).max() < 1e-3
    # ... while poses alone leave them where they were at frame 1
    rigid = accumulate(seq, poses=seq.poses, progress=False)
    assert scene.surface_distance(rigid[:, :3], hits, 0.0).max() > 0.5


def test_accumulate_rigid_masks_use_poses_only():
    seq = synthetic_sequence(3, seed=1, n_beams=8, azimuth_resolution=2.0)
    shift = np.array([0.5, 0.0, 0.0], np.float32)
    const = [lambda x: np.broadcast_to(shift, x.shape).astype(np.float32)] * 2
    ground = [f.is_ground for f in seq]
    rigid = accumulate(seq, poses=seq.poses, progress=False)
    mixed = accumulate(seq, backward_fields=const, poses=seq.poses, rigid=ground, progress=False)
    g = np.concatenate(ground)
    np.testing.assert_allclose(mixed[g], rigid[g], atol=1e-5)
    steps = rigid[~g, 3:4]  # frame k takes k backward steps of +0.5 m in x
    np.testing.assert_allclose(mixed[~g, :3], rigid[~g, :3] + steps * shift, atol=1e-4)
    with pytest.raises(PriorlabError, match="poses"):
        accumulate(seq, backward_fields=const, rigid=ground, progress=False)


def test_invert_field_and_fitted_field():
    T = _rigid(0.02, [0.8, -0.1, 0.0])
    f = _rigid_field(T)
    y = np.random.default_rng(1).uniform(-30, 30, (200, 3)).astype(np.float32)
    x = invert_field(f, y)
    np.testing.assert_allclose(x + f(x), y, atol=1e-4)
    anchors = np.random.default_rng(2).uniform(-5, 5, (100, 3)).astype(np.float32)
    ff = field_from_result(np.tile([[1.0, 2.0, 3.0]], (100, 1)), anchors)
    np.testing.assert_allclose(ff(np.zeros((4, 3))), np.tile([[1.0, 2.0, 3.0]], (4, 1)), atol=1e-6)
    assert isinstance(field_from_result(ff), FittedField)


def test_endpoint_error_values():
    true = np.zeros((3, 4, 3))
    pred = true.copy()
    pred[1, :, 0] = 1.0
    pred[2, :2, 1] = 2.0
    np.testing.assert_allclose(trajectory_endpoint_error(pred, true), [0, 1, 1])
    np.testing.assert_allclose(trajectory_endpoint_error(pred, true, np.array([1, 1, 0, 0], bool)), [0, 1, 2])
    assert trajectory_endpoint_error(pred, true, reduce="none").shape == (3, 4)


def test_bad_inputs_raise():
    pts = np.zeros((10, 3), np.float32)
    with pytest.raises(PriorlabError, match="flow fields"):
        integrate_trajectories([pts, pts, pts], [lambda x: x * 0], progress=False)
    with pytest.raises(PriorlabError, match="poses"):
        integrate_trajectories([pts, pts], [lambda x: x * 0], poses=np.eye(4)[None], progress=False)
    with pytest.raises(PriorlabError, match="reference"):
        integrate_trajectories([pts, pts], [lambda x: x * 0], reference=True, progress=False)
    with pytest.raises(PriorlabError, match="at least 2"):
        integrate_trajectories([pts], [], progress=False)
    with pytest.raises(PriorlabError, match="empty"):
        accumulate([pts, np.zeros((0, 3))], poses=np.tile(np.eye(4), (2, 1, 1)))
    with pytest.raises(PriorlabError, match="nothing to align"):
        accumulate([pts, pts])
    with pytest.raises(PriorlabError):
        trajectory_endpoint_error(np.zeros((2, 3, 3)), np.zeros((2, 4, 3)))
    with pytest.raises(PriorlabError):
        as_poses(np.zeros((2, 5)), 2)
