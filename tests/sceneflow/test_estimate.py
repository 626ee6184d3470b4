"""estimate_flow: NSFP / FNSF / free baseline on a synthetic rigid scene, options, Ctrl-C, bad input."""

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import FlowResult, defaults, estimate_flow, scene_flow_metrics

T = np.array([0.3, -0.2, 0.1], np.float32)


@pytest.fixture(scope="module")
def rigid_pair():
    rng = np.random.default_rng(0)
    pc1 = rng.uniform([-5, -5, 0], [5, 5, 2], (512, 3)).astype(np.float32)
    return pc1, pc1 + T, np.tile(T, (len(pc1), 1))


def _epe(res, gt):
    return scene_flow_metrics(res.flow, gt)["EPE3D"]


def test_nsfp_recovers_rigid_translation(rigid_pair):
    pc1, pc2, gt = rigid_pair
    res = estimate_flow(pc1, pc2, "nsfp", max_iters=300, progress=False, num_threads=1)
    assert isinstance(res, FlowResult) and res.method == "nsfp"
    assert res.flow.shape == (512, 3) and res.flow.dtype == np.float32
    assert _epe(res, gt) < 0.05
    assert res.iterations <= 300 and len(res.loss_history) == res.iterations
    assert res.final_loss == min(res.loss_history)
    assert res.loss_history[res.best_iteration] == res.final_loss
    # the returned field is the fitted continuous flow: query it anywhere
    q = np.array([[0.0, 0.0, 1.0], [2.0, -1.0, 0.5]], np.float32)
    np.testing.assert_allclose(res.field(q), np.tile(T, (2, 1)), atol=0.1)
    np.testing.assert_allclose(res.field(pc1), res.flow, atol=1e-6)


def test_fast_recovers_rigid_translation(rigid_pair):
    pc1, pc2, gt = rigid_pair
    res = estimate_flow(pc1, pc2, "fast", max_iters=400, progress=False, num_threads=1)
    assert _epe(res, gt) < 0.05
    assert res.info["grid_shape"][0] > 50 and res.field is not None


def test_free_baseline_runs(rigid_pair):
    pc1, pc2, gt = rigid_pair
    res = estimate_flow(pc1, pc2, "free", max_iters=200, progress=False, num_threads=1)
    assert res.field is None and res.flow.shape == (512, 3)
    assert res.final_loss < res.loss_history[0]
    assert _epe(res, gt) < np.linalg.norm(T)  # better than zero flow, but no prior to make it exact


def test_points_subsampling_evaluates_every_point(rigid_pair):
    pc1, pc2, gt = rigid_pair
    for method in ("nsfp", "free"):
        res = estimate_flow(pc1, pc2, method, points=128, max_iters=20, progress=False, num_threads=1)
        assert res.flow.shape == (512, 3) and res.info["fit_points"] == (128, 128)
        assert np.isfinite(res.flow).all()


def test_seeded_and_deterministic(rigid_pair):
    pc1, pc2, _ = rigid_pair
    a = estimate_flow(pc1, pc2, "nsfp", max_iters=5, seed=1, progress=False, num_threads=1)
    b = estimate_flow(pc1, pc2, "nsfp", max_iters=5, seed=1, progress=False, num_threads=1)
    c = estimate_flow(pc1, pc2, "nsfp", max_iters=5, seed=2, progress=False, num_threads=1)
    np.testing.assert_array_equal(a.flow, b.flow)
    assert not np.array_equal(a.flow, c.flow)


def test_ctrl_c_returns_best_so_far(rigid_pair):
    pc1, pc2, _ = rigid_pair
    seen = []

    def interrupt_at_15(it, loss):
        seen.append(loss)
        if it == 15:
            raise KeyboardInterrupt

    res = estimate_flow(
        pc1, pc2, "nsfp", max_iters=100, progress=False, callback=interrupt_at_15, num_threads=1
    )
    assert res.interrupted and res.iterations == 16 and res.info["stop_reason"] == "interrupted"
    assert res.final_loss == min(seen) and np.isfinite(res.flow).all()


def test_early_stopping_and_defaults(rigid_pair):
    pc1, pc2, _ = rigid_pair
    d = defaults("nsfp")
    assert (d["lr"], d["max_iters"], d["patience"], d["min_delta"], d["weight_decay"]) == (
        8e-3,
        5000,
        100,
        1e-4,
        1e-4,
    )
    f = defaults("fast")
    assert (f["optimizer"], f["lr"], f["patience"], f["min_delta"], f["voxel_size"]) == (
        "adam",
        8e-3,
        10,
        1e-3,
        0.1,
    )
    # a huge min_delta: no iteration counts as an improvement -> stops after `patience` more steps
    res = estimate_flow(pc1, pc2, "free", max_iters=100, patience=3, min_delta=1e9, progress=False)
    assert res.iterations == 4 and res.info["stop_reason"] == "early_stopping"


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((0, 3), np.float32), "empty"),
        (np.zeros((1, 3), np.float32), "only 1 point"),
        (np.zeros((10, 4), np.float32), r"pc1\[:, :3\]"),
        (np.zeros((10, 2), np.float32), "3"),
        (np.zeros((10, 3), np.int32), "float"),
        (np.array([[0, 0, np.nan], [1, 1, 1]], np.float32), "NaN"),
        (np.zeros(30, np.float32), "shape"),
    ],
)
def test_bad_clouds(bad, match, rigid_pair):
    with pytest.raises(PriorlabError, match=match):
        estimate_flow(bad, rigid_pair[1], progress=False)


def test_bad_arguments(rigid_pair):
    pc1, pc2, _ = rigid_pair
    with pytest.raises(PriorlabError, match="did you mean 'nsfp'"):
        estimate_flow(pc1, pc2, "nsf")
    with pytest.raises(PriorlabError, match="truncate"):
        estimate_flow(pc1, pc2, "nsfp", truncat=1.0)
    with pytest.raises(PriorlabError, match="option"):
        estimate_flow(pc1, pc2, "free", voxel_size=0.2)
    with pytest.raises(PriorlabError, match="max_iters"):
        estimate_flow(pc1, pc2, "nsfp", max_iters=0)
    with pytest.raises(PriorlabError, match="lr"):
        estimate_flow(pc1, pc2, "nsfp", lr=-1)
    with pytest.raises(PriorlabError, match="points"):
        estimate_flow(pc1, pc2, "nsfp", points=1)
    with pytest.raises(PriorlabError, match="device"):
        estimate_flow(pc1, pc2, "nsfp", device="tpu")
    with pytest.raises(PriorlabError, match="max_grid_bytes"):
        estimate_flow(pc1, pc2, "fast", max_grid_bytes=1000, progress=False)
    with pytest.raises(PriorlabError, match="optimizer"):
        estimate_flow(pc1, pc2, "fast", optimizer="lbfgs", progress=False)
