"""Range crop, RANSAC ground removal, map ground mask, subsampling, ego-motion compensation."""

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import (
    compensate_ego_motion,
    crop_range,
    ground_mask_from_height_map,
    load_av2_pair,
    remove_ground_plane,
    subsample,
)


def _rot_z(yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_crop_range():
    pts = np.array([[1, 0, 0], [0, 5, 0], [30, 40, 0], [3, 4, 12], [0, 0, -5]], np.float32)
    assert crop_range(pts, 10).tolist() == [True, True, False, False, True]
    assert crop_range(pts, 10, planar=True).tolist() == [True, True, False, True, True]
    assert crop_range(pts, 100, min_range=2).tolist() == [False, True, True, True, True]
    assert crop_range(pts, 100, z_range=(-1, 4)).tolist() == [True, True, True, False, False]
    with pytest.raises(PriorlabError, match="min_range < max_range"):
        crop_range(pts, 1, min_range=2)
    with pytest.raises(PriorlabError, match="z_range"):
        crop_range(pts, 10, z_range=(4, -1))
    with pytest.raises(PriorlabError, match="columns"):
        crop_range(pts[:, :2], 10)


def _street(seed=0, tilt=0.0):
    """Ground (z = 0) plus walls, cars and a dense horizontal slab of 'car bodies' at z ~ 1.3 m."""
    rng = np.random.default_rng(seed)
    ground = np.column_stack([rng.uniform(-30, 30, (3000, 2)), rng.normal(0, 0.03, 3000)])
    wall = np.column_stack([rng.uniform(-30, 30, 2000), np.full(2000, 12.0), rng.uniform(0.4, 8, 2000)])
    slab = np.column_stack([rng.uniform(-30, 30, (3500, 2)), rng.normal(1.3, 0.05, 3500)])
    pts = np.vstack([ground, wall, slab])
    is_ground = np.r_[np.ones(3000, bool), np.zeros(5500, bool)]
    if tilt:
        c, s = np.cos(tilt), np.sin(tilt)
        pts = pts @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
    return pts.astype(np.float32), is_ground


@pytest.mark.parametrize("tilt", [0.0, 0.08])
def test_remove_ground_plane_prefers_lowest_supported_plane(tilt):
    pts, is_ground = _street(tilt=tilt)
    non_ground, (n, d) = remove_ground_plane(pts, threshold=0.2, return_plane=True)
    assert (non_ground == ~is_ground).mean() > 0.99
    assert n[2] > 0.99 and abs(d) < 0.1
    again = remove_ground_plane(pts, threshold=0.2)
    np.testing.assert_array_equal(non_ground, again)  # seeded


def test_remove_ground_plane_errors():
    vertical = np.column_stack([np.zeros(100), np.random.default_rng(0).uniform(0, 5, (100, 2))]).astype(
        np.float32
    )
    with pytest.raises(PriorlabError, match="horizontal"):
        remove_ground_plane(vertical)
    with pytest.raises(PriorlabError, match="threshold"):
        remove_ground_plane(vertical, threshold=0)
    with pytest.raises(PriorlabError, match="at least 3"):
        remove_ground_plane(vertical[:2])


def test_ground_mask_from_height_map_synthetic():
    H = np.full((10, 20), 5.0, np.float32)  # 1 m cells, ground at z_city = 5
    H[0, 0] = np.nan
    sim2 = {"R": [1, 0, 0, 1], "t": [0.0, 0.0], "s": 1.0}
    T = np.eye(4)
    T[:3, 3] = [2.0, 3.0, 5.0]  # ego origin at city (2, 3, 5)
    pts = np.array(
        [
            [0.5, 0.5, 0.1],  # city (2.5, 3.5, 5.1): ground
            [0.5, 0.5, 0.5],  # 0.5 above: not ground
            [-1.9, -2.9, 0.0],  # city (0.1, 0.1): NaN cell -> not ground
            [30.0, 0.0, 0.0],  # off the raster
            [-5.0, 0.0, 0.0],
        ],
        np.float32,
    )  # negative pixel -> off the raster
    g = ground_mask_from_height_map(pts, H, sim2, city_SE3_ego=T)
    assert g.tolist() == [True, False, False, False, False]
    A = np.eye(3)
    assert ground_mask_from_height_map(pts + [2, 3, 5], H, A).tolist() == g.tolist()
    with pytest.raises(PriorlabError, match="sim2"):
        ground_mask_from_height_map(pts, H, np.eye(2))


def test_ground_mask_real_av2(sample):
    pair = load_av2_pair(sample("av2_api_val_pair/pair_7fab2350_315966265259836000.npz"))
    non_ground = remove_ground_plane(pair["pc0"])
    assert ((~non_ground) == pair["is_ground0"]).mean() > 0.95


def test_subsample():
    pts = np.random.default_rng(0).uniform(0, 1, (1000, 3)).astype(np.float32)
    idx = subsample(pts, 100, seed=3)
    assert len(idx) == 100 and len(np.unique(idx)) == 100 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, subsample(pts, 100, seed=3))
    assert not np.array_equal(idx, subsample(pts, 100, seed=4))
    np.testing.assert_array_equal(subsample(pts, 5000), np.arange(1000))
    vox = subsample(pts, None, method="voxel", voxel_size=0.5)
    keys = np.floor(pts[vox] / 0.5)
    assert len(vox) == 8 and len(np.unique(keys, axis=0)) == 8
    assert len(subsample(pts, 3, method="voxel", voxel_size=0.5)) == 3
    with pytest.raises(PriorlabError, match="unknown subsample method"):
        subsample(pts, 10, method="fps")
    with pytest.raises(PriorlabError, match="positive integer"):
        subsample(pts, 0)


def test_compensate_ego_motion():
    T = np.eye(4)
    T[:3, :3] = _rot_z(np.pi / 2)
    T[:3, 3] = [1, 2, 3]
    pts = np.array([[1, 0, 0, 7], [0, 1, 0, 8]], np.float32)
    out = compensate_ego_motion(pts, T)
    np.testing.assert_allclose(out, [[1, 3, 3, 7], [0, 2, 3, 8]], atol=1e-6)
    np.testing.assert_allclose(compensate_ego_motion(pts, T[:3]), out)
    bad = T.copy()
    bad[:3, :3] *= 2
    with pytest.raises(PriorlabError, match="rotation"):
        compensate_ego_motion(pts, bad)
    with pytest.raises(PriorlabError, match="4x4"):
        compensate_ego_motion(pts, np.eye(3))
    with pytest.raises(PriorlabError, match="NaN"):
        compensate_ego_motion(pts, np.full((4, 4), np.nan))
