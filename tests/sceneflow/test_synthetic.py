"""Synthetic lidar: exact, seeded, fast, and its ground truth agrees with the object motions."""

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from priorlab.errors import PriorlabError
from priorlab.sceneflow.synthetic import (
    BOX,
    CYLINDER,
    PEDESTRIAN,
    REGULAR_VEHICLE,
    Lidar,
    Scene,
    Structure,
    make_scene,
    synthetic_pair,
    synthetic_sequence,
)


def _pose4(x, y, yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:2, 3] = [x, y]
    return T


def test_seeded_and_reproducible():
    small = dict(n_beams=16, azimuth_resolution=1.0)
    a, b, c = (
        synthetic_pair(seed=3, **small),
        synthetic_pair(seed=3, **small),
        synthetic_pair(seed=4, **small),
    )
    for k in ("pc0", "pc1", "flow", "classes", "dynamic"):
        np.testing.assert_array_equal(a[k], b[k])
    assert a["pc0"].shape != c["pc0"].shape or not np.array_equal(a["pc0"], c["pc0"])
    # a frame does not depend on how long the sequence is
    s3, s5 = synthetic_sequence(3, seed=1, **small), synthetic_sequence(5, seed=1, **small)
    np.testing.assert_array_equal(s3[2].points, s5[2].points)


def test_frame_is_sized():
    scene = make_scene(0, n_beams=32, azimuth_resolution=0.36)
    f = scene.frame(1)
    assert scene.lidar.n_azimuth == 1000
    assert 15_000 < len(f) <= 32_000
    assert f.points.dtype == np.float32 and f.flow.dtype == np.float32
    assert f.is_ground.any() and (~f.is_ground).any()
    r = np.linalg.norm(f.points, axis=1)
    assert r.max() <= scene.lidar.max_range + 0.2 and r.min() >= scene.lidar.min_range - 0.2


def test_pair_has_av2_keys_and_labels():
    p = synthetic_pair(seed=0)
    for k in ("pc0", "pc1", "flow", "classes", "dynamic", "ego_motion", "is_ground0", "eval_mask"):
        assert k in p
    n = len(p["pc0"])
    assert p["flow"].shape == (n, 3) and p["classes"].shape == (n,) and p["dynamic"].shape == (n,)
    assert p["ego_motion"].shape == (4, 4)
    assert set(np.unique(p["classes"])) <= {0, PEDESTRIAN, REGULAR_VEHICLE}
    # all three buckets of the three-way EPE exist: moving cars, parked cars, background
    fg = p["classes"] > 0
    assert (fg & p["dynamic"]).sum() > 100 and (fg & ~p["dynamic"]).sum() > 20 and (~fg).sum() > 1000
    assert not (p["dynamic"] & (p["object_id0"] == 0)).any()
    np.testing.assert_array_equal(p["eval_mask"], (np.abs(p["pc0"][:, :2]) <= 50).all(1) & ~p["is_ground0"])


def test_static_flow_is_exactly_ego_motion():
    seq = synthetic_sequence(2, seed=2, ego_yaw_rate=0.2)
    f0, f1 = seq.frames
    E = np.linalg.inv(f1.pose) @ f0.pose  # AV2 ego1_SE3_ego0
    np.testing.assert_allclose(f0.ego_motion, E, atol=1e-12)
    p = f0.points.astype(np.float64)
    ego_flow = p @ E[:3, :3].T + E[:3, 3] - p
    static = f0.object_id == 0
    assert static.sum() > 1000
    np.testing.assert_allclose(f0.flow[static], ego_flow[static], atol=1e-5)
    # dynamic = AV2 definition
    d = np.linalg.norm(f0.flow - ego_flow, axis=1)
    np.testing.assert_array_equal(f0.dynamic, d >= 0.05)


def test_object_points_move_with_their_rigid_motion():
    scene = make_scene(5, object_yaw_rate=0.4, ego_yaw_rate=-0.1)
    f = scene.frame(0)
    t0, t1 = f.time, f.time + scene.dt
    E0, E1 = scene.ego_pose(t0), scene.ego_pose(t1)
    P0, P1 = scene.structure_poses2d(t0), scene.structure_poses2d(t1)
    hits = np.unique(f.hit[f.hit >= 0])
    checked = 0
    for j in hits:
        m = f.hit == j
        M = np.linalg.inv(E1) @ _pose4(*P1[j]) @ np.linalg.inv(_pose4(*P0[j])) @ E0
        p = f.points[m].astype(np.float64)
        np.testing.assert_allclose(f.points[m] + f.flow[m], p @ M[:3, :3].T + M[:3, 3], atol=1e-4)
        checked += scene.structures[j].speed > 0
    assert checked >= 3


def test_flowed_points_lie_on_next_frames_surfaces():
    scene = make_scene(1, range_noise=0.0, object_yaw_rate=0.3)
    f0, f1 = scene.frame(0), scene.frame(1)
    assert scene.surface_distance(f0.points, f0.hit, f0.time).max() < 1e-3
    assert scene.surface_distance(f0.points + f0.flow, f0.hit, f1.time).max() < 1e-3
    # and with noise: pc0 + flow is much closer to pc1 than pc0 is, on the moving points
    noisy = make_scene(1, range_noise=0.02)
    g0, g1 = noisy.frame(0), noisy.frame(1)
    tree = cKDTree(g1.points)
    dyn = g0.dynamic
    before = tree.query(g0.points[dyn])[0]
    after = tree.query(g0.points[dyn] + g0.flow[dyn])[0]
    assert np.median(after) < 0.25 * np.median(before)
    assert noisy.surface_distance(g0.points + g0.flow, g0.hit, g1.time).max() < 6 * 0.02 + 1e-3


def test_analytic_ray_hits():
    lidar = Lidar(
        n_beams=1, vertical_fov=(0.0, 1.0), azimuth_resolution=1.0, range_noise=0.0, sensor_height=1.0
    )
    box = Structure(BOX, (2.0, 2.0, 3.0), 10.0, 0.0, 0.0, speed=5.0, object_id=1, category=REGULAR_VEHICLE)
    cyl = Structure(CYLINDER, (1.0, 1.0, 3.0), 0.0, 5.0, 0.0, object_id=2, category=PEDESTRIAN)
    scene = Scene(lidar, [box, cyl], ego_speed=0.0)
    f = scene.frame(0)
    az = np.degrees(np.arctan2(f.points[:, 1], f.points[:, 0]))
    front = np.argmin(np.abs(az))
    left = np.argmin(np.abs(az - 90))
    np.testing.assert_allclose(f.points[front], [9.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(f.points[left], [0.0, 4.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(f.flow[front], [0.5, 0.0, 0.0], atol=1e-6)  # 5 m/s * 0.1 s
    np.testing.assert_allclose(f.flow[left], 0.0, atol=1e-6)
    assert f.object_id[front] == 1 and f.classes[front] == REGULAR_VEHICLE and f.dynamic[front]
    assert f.classes[left] == PEDESTRIAN and not f.dynamic[left]


def test_true_trajectories():
    seq = synthetic_sequence(4, seed=0)
    f0 = seq.frames[0]
    tr = seq.trajectories
    assert tr.shape == (4, len(f0), 3)
    np.testing.assert_array_equal(tr[0], f0.points)
    np.testing.assert_allclose(tr[1], f0.points + f0.flow, atol=1e-5)
    # static points: trajectory k = rigid ego transform T_k<-0
    rel = seq.relative_poses
    st = f0.object_id == 0
    for k in range(4):
        T = np.linalg.inv(rel[k])
        np.testing.assert_allclose(tr[k][st], f0.points[st] @ T[:3, :3].T + T[:3, 3], atol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_beams=0),
        dict(vertical_fov=(5, -5)),
        dict(max_range=-1),
        dict(range_noise=-0.1),
        dict(dt=0),
        dict(n_objects=-1),
        dict(moving_fraction=2),
    ],
)
def test_bad_parameters_raise(kw):
    with pytest.raises(PriorlabError):
        make_scene(0, **kw)


def test_bad_sequence_requests():
    with pytest.raises(PriorlabError):
        synthetic_sequence(0)
    with pytest.raises(PriorlabError):
        synthetic_sequence(2).pair(1)
