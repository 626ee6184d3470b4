"""The rigid-motion prior (method "rigid"): known motions on a small scene of boxes, invariants, errors."""

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import estimate_flow
from priorlab.sceneflow.ego import estimate_ego_motion
from priorlab.sceneflow.rigid import rigid_flow


def _box_surface(rng, centre, size, n):
    """``n`` points on the side faces and top of an axis-aligned box standing on z = 0."""
    sx, sy, sz = size
    face = rng.integers(0, 5, n)
    u, v = rng.random(n), rng.random(n)
    pts = np.empty((n, 3))
    pts[:, 0] = np.where(face == 0, 0, np.where(face == 1, sx, u * sx))
    pts[:, 1] = np.where(face == 2, 0, np.where(face == 3, sy, (u if False else v) * sy))
    pts[:, 2] = np.where(face == 4, sz, v * sz)
    pts[face < 2, 1] = u[face < 2] * sy
    pts[(face == 2) | (face == 3), 0] = u[(face == 2) | (face == 3)] * sx
    return pts + np.asarray(centre) - [sx / 2, sy / 2, 0]


def _ground(rng, n):
    xy = rng.uniform(-25, 25, (n, 2))
    return np.column_stack([xy, rng.normal(0, 0.01, n)])


def _static_boxes(rng):
    return [_box_surface(rng, (0, 12, 0), (20, 0.3, 3), 3000),
            _box_surface(rng, (8, -5, 0), (4.5, 2, 1.5), 800)]


def _scene(rng, motion=(0.8, 0.1), ego=None):
    """Sweep 1 and 2 of a scene: ground, a wall, a parked car and a car moving by ``motion`` (m)."""
    static = _static_boxes(rng)
    mover = (-6.0, 3.0, 0.0)
    ground1, ground2 = _ground(rng, 3000), _ground(rng, 3000)
    car1 = _box_surface(rng, mover, (4.5, 2, 1.5), 800)
    car2 = _box_surface(rng, (mover[0] + motion[0], mover[1] + motion[1], 0), (4.5, 2, 1.5), 800)
    redraw = _static_boxes(rng)  # sampled afresh, as a second sweep samples surfaces anew
    pc1 = np.concatenate([ground1, *static, car1])
    pc2 = np.concatenate([ground2, *redraw, car2])
    g1 = np.zeros(len(pc1), bool)
    g1[:3000] = True
    g2 = np.zeros(len(pc2), bool)
    g2[:3000] = True
    moving = np.zeros(len(pc1), bool)
    moving[-800:] = True
    if ego is not None:  # the sensor moved: express sweep 2 in the new sensor frame
        inv = np.linalg.inv(ego)
        pc2 = pc2 @ inv[:3, :3].T + inv[:3, 3]
    return pc1, pc2, g1, g2, moving


def _yaw_pose(yaw, tx, ty):
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:2, 3] = [tx, ty]
    return T


def test_moving_car_gets_its_motion_and_static_points_exactly_the_ego_motion():
    rng = np.random.default_rng(0)
    pc1, pc2, g1, g2, moving = _scene(rng)
    flow, info = rigid_flow(pc1, pc2, ego_motion=np.eye(4), ground1=g1, ground2=g2)
    assert np.abs(flow[moving] - [0.8, 0.1, 0.0]).max() < 0.05
    assert np.array_equal(flow[~moving], np.zeros_like(flow[~moving]))  # ego motion is identity
    assert info["dynamic_clusters"] == 1


def test_capture_times_undo_the_distortion_of_a_moving_object():
    # the car is swept 0.1 of an interval into sweep 1 but 0.25 into sweep 2 (it moved round the
    # sensor), so its second copy sits a further 0.15 x motion ahead: registration without capture
    # times reads 1.15 x the motion, de-skewing with them recovers it
    rng = np.random.default_rng(3)
    motion = np.array([0.8, 0.0])
    pc1, pc2, g1, g2, moving = _scene(rng, motion=tuple(motion))
    times1, times2 = np.zeros(len(pc1)), np.zeros(len(pc2))
    times1[-800:], times2[-800:] = 0.01, 0.025  # s, with the default 0.1 s sweep interval
    pc1[-800:, :2] += 0.1 * motion
    pc2[-800:, :2] += 0.25 * motion
    args = dict(ego_motion=np.eye(4), ground1=g1, ground2=g2)
    plain, _ = rigid_flow(pc1, pc2, **args)
    deskewed, _ = rigid_flow(pc1, pc2, times1=times1, times2=times2, **args)
    assert np.abs(plain[moving, 0].mean() - 1.15 * motion[0]) < 0.03
    assert np.abs(deskewed[moving, :2] - motion).max() < 0.03
    assert np.array_equal(deskewed[~moving], plain[~moving])


def test_ego_motion_is_applied_to_static_points_and_composed_with_object_motion():
    rng = np.random.default_rng(1)
    ego = _yaw_pose(0.02, 1.0, 0.1)
    pc1, pc2, g1, g2, moving = _scene(rng, ego=ego)
    flow, _ = rigid_flow(pc1, pc2, ego_motion=np.linalg.inv(ego), ground1=g1, ground2=g2)
    inv = np.linalg.inv(ego)
    expected_static = pc1[~moving] @ inv[:3, :3].T + inv[:3, 3] - pc1[~moving]
    np.testing.assert_allclose(flow[~moving], expected_static, atol=1e-5)
    expected_moving = (pc1[moving] + [0.8, 0.1, 0.0]) @ inv[:3, :3].T + inv[:3, 3] - pc1[moving]
    assert np.abs(flow[moving] - expected_moving).max() < 0.05


@pytest.mark.parametrize("on_ground", [False, True])
def test_estimated_ego_motion_matches_the_true_one(on_ground):
    rng = np.random.default_rng(2)
    ego = _yaw_pose(0.03, 1.2, -0.2)
    pc1, pc2, g1, g2, _ = _scene(rng, motion=(0.0, 0.0), ego=ego)
    T = estimate_ego_motion(pc1, pc2, **({"ground1": g1, "ground2": g2} if on_ground else {}))
    true = np.linalg.inv(ego)
    displacement = np.linalg.norm(pc1 @ (T - true)[:3, :3].T + (T - true)[:3, 3], axis=1)
    assert displacement.mean() < 0.03  # surfaces sampled afresh in each sweep: no exact match


def test_all_static_scene_stays_static():
    # surfaces resampled between sweeps can make a small fragment look shifted (a false motion on
    # well under 2 % of the points is the failure mode to bound); the objects themselves stay put
    rng = np.random.default_rng(3)
    pc1, pc2, g1, g2, _ = _scene(rng, motion=(0.0, 0.0))
    flow, info = rigid_flow(pc1, pc2, ego_motion=np.eye(4), ground1=g1, ground2=g2)
    moved = np.linalg.norm(flow, axis=1) > 0
    assert moved.mean() < 0.02 and info["dynamic_clusters"] <= 1


def test_only_ground_gives_the_ego_flow():
    rng = np.random.default_rng(4)
    pc = _ground(rng, 500)
    ego = _yaw_pose(0.0, 0.5, 0.0)
    flow, info = rigid_flow(pc, pc, ego_motion=ego, ground1=np.ones(500, bool), ground2=np.ones(500, bool))
    np.testing.assert_allclose(flow, np.tile([0.5, 0, 0], (500, 1)), atol=1e-6)
    assert info["clusters"] == 0


def test_estimate_flow_rigid_returns_a_field_that_agrees_with_the_flow():
    rng = np.random.default_rng(5)
    pc1, pc2, g1, g2, moving = _scene(rng)
    res = estimate_flow(pc1, pc2, method="rigid", ego_motion=np.eye(4), ground1=g1, ground2=g2)
    np.testing.assert_allclose(res.field(pc1), res.flow, atol=1e-6)
    assert res.method == "rigid" and res.flow.dtype == np.float32 and res.flow.shape == pc1.shape


def test_bad_input_gets_a_clear_error():
    rng = np.random.default_rng(6)
    pc1, pc2, g1, g2, _ = _scene(rng)
    with pytest.raises(PriorlabError, match="cluster_eps"):
        rigid_flow(pc1, pc2, cluster_ep=0.3)  # did-you-mean
    with pytest.raises(PriorlabError, match="positive"):
        rigid_flow(pc1, pc2, max_translation=-1.0)
    with pytest.raises(PriorlabError, match="ground1"):
        rigid_flow(pc1, pc2, ego_motion=np.eye(4), ground1=g1[:-1], ground2=g2)
    with pytest.raises(PriorlabError, match="times1"):
        rigid_flow(pc1, pc2, ego_motion=np.eye(4), ground1=g1, ground2=g2, times1=np.zeros(3))
    with pytest.raises(PriorlabError, match="pc1"):
        rigid_flow(pc1[:5], pc2)  # fewer points than a cluster needs
    with pytest.raises(PriorlabError, match="points"):
        estimate_flow(pc1, pc2, method="rigid", points=2048)
    with pytest.raises(PriorlabError, match="ego_motion"):
        rigid_flow(pc1, pc2, ego_motion=np.eye(3), ground1=g1, ground2=g2)


def _line(length=20.0, n=400, y=-15.0):
    x = np.linspace(-length / 2, length / 2, n)
    return np.column_stack([x, np.full(n, y)])


def _shift(t):
    T = np.eye(3)
    T[:2, 2] = t
    return T


@pytest.mark.parametrize("case, expected", [
    ("wall slid along itself by the ego shift", True),
    ("the same slide on a compact cluster", False),
    ("a wall moved across itself", False),
    ("a wall slid along itself by twice the ego shift", False),
])
def test_the_sampling_artefact_of_a_wall_parallel_to_the_travel_is_recognised(case, expected):
    # the sensor moves +1 m along x; in its own frame a static wall moves -1 m, so in the
    # ego-compensated frame a motion of +1 m keeps the wall where it was in the sensor frame
    from priorlab.sceneflow.rigid import RIGID_DEFAULTS
    from priorlab.sceneflow.rigid_cluster import rides_with_the_sensor

    wall = _line()
    compact = np.random.default_rng(0).normal(0, 1.0, (400, 2)) + [0, -15]
    src, T = {
        "wall slid along itself by the ego shift": (wall, _shift((1.0, 0.0))),
        "the same slide on a compact cluster": (compact, _shift((1.0, 0.0))),
        "a wall moved across itself": (wall, _shift((0.0, 1.0))),
        "a wall slid along itself by twice the ego shift": (wall, _shift((2.0, 0.0))),
    }[case]
    sensor_xy = src + [1.0, 0.0]  # sweep-1 sensor frame: compensated position + the sensor's 1 m
    assert bool(rides_with_the_sensor(T, src, sensor_xy, 1.0, RIGID_DEFAULTS)) is expected


def test_a_long_wall_beside_the_road_stays_static_on_a_synthetic_sequence():
    # seed 0, frames 1 -> 2: a 20 m building face parallel to the travel, which the displacement vote
    # slid along itself by the ego's 1 m (its samples line up better there) before the guard
    from priorlab.sceneflow.synthetic import synthetic_sequence

    seq = synthetic_sequence(3, seed=0)
    f1, f2 = seq.frames[1], seq.frames[2]
    flow, info = rigid_flow(f1.points, f2.points, seed=0)
    static = ~f1.dynamic & ~f1.is_ground
    error = np.linalg.norm(flow[static] - f1.flow[static], axis=1)
    assert (error > 0.5).mean() < 0.01  # without the guard: 27 % of the static points, 1 m off
