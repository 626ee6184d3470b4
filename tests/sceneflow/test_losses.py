"""Exact nearest neighbours, truncated Chamfer vs brute force, distance transform vs exact distances."""

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from priorlab.errors import PriorlabError
from priorlab.sceneflow import DistanceTransform, KDIndex, chamfer_loss, nearest_neighbor


def _brute_nn(q, r):
    d = ((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1)
    return d.min(1), d.argmin(1)


def _brute_chamfer(p, q, truncate):
    a, _ = _brute_nn(p, q)
    b, _ = _brute_nn(q, p)
    if truncate is not None:
        a = np.where(a < truncate, a, 0.0)
        b = np.where(b < truncate, b, 0.0)
    return a.mean() + b.mean()


@pytest.mark.parametrize("method", ["kdtree", "brute", "auto"])
def test_nearest_neighbor_matches_brute_force(method):
    rng = np.random.default_rng(0)
    q = rng.uniform(-5, 5, (300, 3)).astype(np.float32)
    r = rng.uniform(-5, 5, (400, 3)).astype(np.float32)
    d, i = nearest_neighbor(q, r, method=method, chunk=64)
    bd, bi = _brute_nn(q, r)
    assert isinstance(d, np.ndarray) and d.shape == (300,)
    np.testing.assert_allclose(d, bd, rtol=1e-5, atol=1e-6)
    assert (i == bi).mean() > 0.99  # ties aside, the same neighbour


def test_nearest_neighbor_gradients_and_index():
    rng = np.random.default_rng(1)
    q = torch.tensor(rng.normal(size=(50, 3)), dtype=torch.float32, requires_grad=True)
    r = torch.tensor(rng.normal(size=(60, 3)), dtype=torch.float32, requires_grad=True)
    d, i = nearest_neighbor(q, r)
    d.sum().backward()
    expected = 2 * (q.detach() - r.detach()[i])
    torch.testing.assert_close(q.grad, expected)
    assert r.grad.abs().sum() > 0
    idx = KDIndex(r.detach())
    d2, i2 = nearest_neighbor(q.detach(), idx)
    torch.testing.assert_close(i2, i)


def test_nearest_neighbor_exact_on_100k_points():
    rng = np.random.default_rng(2)
    a = rng.uniform(-50, 50, (100_000, 3)).astype(np.float32)
    b = a + rng.normal(0, 0.05, a.shape).astype(np.float32)
    d, i = nearest_neighbor(torch.from_numpy(a), torch.from_numpy(b))
    sub = rng.choice(100_000, 20, replace=False)
    bd = np.array([((b.astype(np.float64) - a[k]) ** 2).sum(1).min() for k in sub])
    np.testing.assert_allclose(d.numpy()[sub], bd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("truncate", [None, 2.0, 0.05])
def test_chamfer_matches_brute_force(truncate):
    rng = np.random.default_rng(3)
    p = rng.uniform(-2, 2, (200, 3)).astype(np.float32)
    q = (p[:150] + rng.normal(0, 0.2, (150, 3))).astype(np.float32)
    got = chamfer_loss(p, q, truncate=truncate)
    assert got.ndim == 0
    np.testing.assert_allclose(float(got), _brute_chamfer(p, q, truncate), rtol=1e-5)


def test_chamfer_truncation_ignores_far_outliers():
    p = np.array([[0, 0, 0], [100, 0, 0]], np.float32)  # second point has no partner within sqrt(2) m
    q = np.array([[0.1, 0, 0]], np.float32)
    full = float(chamfer_loss(p, q, truncate=None))
    trunc = float(chamfer_loss(p, q, truncate=2.0))
    assert full > 1000
    # official semantics: the outlier's term is zeroed but it still counts in the mean's denominator
    np.testing.assert_allclose(trunc, 0.01 / 2 + 0.01 / 1, rtol=1e-5)
    pt = torch.tensor(p, requires_grad=True)
    chamfer_loss(pt, q, truncate=2.0).backward()
    assert pt.grad[1].abs().sum() == 0 and pt.grad[0].abs().sum() > 0


def test_chamfer_differentiable_wrt_both():
    rng = np.random.default_rng(4)
    p = torch.tensor(rng.normal(size=(40, 3)), dtype=torch.float64, requires_grad=True)
    q = torch.tensor(rng.normal(size=(30, 3)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chamfer_loss(a, b, truncate=None), (p, q))


def test_chamfer_bad_input():
    with pytest.raises(PriorlabError, match=r"\(N, 3\)"):
        chamfer_loss(np.zeros((5, 4), np.float32), np.zeros((5, 3), np.float32))
    with pytest.raises(PriorlabError, match="empty"):
        chamfer_loss(np.zeros((0, 3), np.float32), np.zeros((5, 3), np.float32))
    with pytest.raises(PriorlabError, match="truncate"):
        chamfer_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), truncate=-1)
    with pytest.raises(PriorlabError, match="float"):
        chamfer_loss(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32))


def test_distance_transform_vs_exact():
    rng = np.random.default_rng(5)
    target = rng.uniform([-4, -4, -1], [4, 4, 1], (500, 3)).astype(np.float32)
    dt = DistanceTransform(target, voxel_size=0.1)
    q = rng.uniform([-4, -4, -1], [4, 4, 1], (2000, 3)).astype(np.float32)
    exact, _ = cKDTree(target).query(q)
    got = dt(q)
    assert isinstance(got, np.ndarray)
    # snapping to vertices (<= sqrt(3)/2 voxel) plus trilinear interpolation (<= sqrt(3)/2 voxel)
    assert np.abs(got - exact).max() <= np.sqrt(3) * 0.1 + 1e-4
    assert np.abs(got - exact).mean() < 0.05
    # gradient points away from the nearest target point
    p = torch.tensor(target[:1] + np.array([[0.5, 0.0, 0.0]], np.float32), requires_grad=True)
    far = dt(p).sum()
    far.backward()
    assert torch.isfinite(p.grad).all()
    assert dt.nbytes == 4 * np.prod(dt.shape)


def test_distance_transform_memory_guard():
    pts = np.array([[0, 0, 0], [200, 200, 20]], np.float32)
    with pytest.raises(PriorlabError) as e:
        DistanceTransform(pts, voxel_size=0.1)
    msg = str(e.value)
    assert "\n" not in msg and "GiB" in msg and "crop" in msg and "voxel_size" in msg
    assert "2004x2004x204" in msg
    DistanceTransform(pts, voxel_size=2.0)  # coarser grid fits
    with pytest.raises(PriorlabError, match="limit"):
        DistanceTransform(pts, voxel_size=2.0, max_bytes=1000)
    with pytest.raises(PriorlabError, match="voxel_size"):
        DistanceTransform(pts, voxel_size=0)
