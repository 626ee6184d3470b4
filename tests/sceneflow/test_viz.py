"""Plots write non-empty PNGs and refuse bad input with PriorlabError."""

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow.synthetic import synthetic_sequence
from priorlab.sceneflow.trajectory import accumulate, to_reference
from priorlab.sceneflow.viz import (
    flow_colors,
    plot_accumulated,
    plot_error_map,
    plot_flow_bev,
    plot_trajectories,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_SMALL = dict(n_beams=16, azimuth_resolution=1.0)


@pytest.fixture(scope="module")
def seq():
    return synthetic_sequence(3, seed=0, **_SMALL)


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 10_000


def test_flow_and_error_maps(seq, tmp_path):
    p = seq.pair(0)
    out = plot_flow_bev(
        p["pc0"], p["flow"], tmp_path / "bev.png", pc1=p["pc1"], ego_motion=p["ego_motion"], title="t"
    )
    assert _is_png(out)
    assert _is_png(plot_flow_bev(p["pc0"], p["flow"], tmp_path / "sub" / "total.png", max_arrows=0))
    assert _is_png(
        plot_flow_bev(p["pc0"], p["flow"], tmp_path / "masked.png", mask=~p["is_ground0"], range_m=20)
    )
    noisy = p["flow"] + np.random.default_rng(0).normal(0, 0.1, p["flow"].shape).astype(np.float32)
    assert _is_png(plot_error_map(p["pc0"], noisy, p["flow"], tmp_path / "err.png", mask=p["eval_mask"]))


def test_trajectories_and_accumulated(seq, tmp_path):
    ref = to_reference(seq.trajectories, seq.poses)
    assert _is_png(
        plot_trajectories(ref, tmp_path / "traj.png", true_traj=ref, background=seq.frames[0].points)
    )
    cloud = accumulate(seq, poses=seq.poses, progress=False)
    assert _is_png(plot_accumulated(cloud, tmp_path / "acc.png"))
    assert _is_png(plot_accumulated([cloud, cloud], tmp_path / "acc2.png", titles=["a", "b"], range_m=20))


def test_flow_colors():
    rgb = flow_colors(np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 5, 0]], float), scale=1.0)
    assert rgb.shape == (4, 3) and (rgb >= 0).all() and (rgb <= 1).all()
    assert np.allclose(rgb[0], rgb[0].mean())  # no motion: grey
    assert not np.allclose(rgb[1], rgb[2])  # opposite directions: different hues


def test_bad_inputs(seq, tmp_path):
    p = seq.pair(0)
    with pytest.raises(PriorlabError, match="png"):
        plot_flow_bev(p["pc0"], p["flow"], tmp_path / "x.jpg")
    with pytest.raises(PriorlabError, match="rows"):
        plot_flow_bev(p["pc0"], p["flow"][:10], tmp_path / "x.png")
    with pytest.raises(PriorlabError):
        plot_error_map(p["pc0"], p["flow"], p["flow"], tmp_path / "x.png", mask=np.ones(3, bool))
    with pytest.raises(PriorlabError):
        plot_trajectories(np.zeros((1, 5, 3)), tmp_path / "x.png")
    with pytest.raises(PriorlabError):
        plot_accumulated(np.zeros((5, 3)), tmp_path / "x.png")
