"""``--rrd`` recordings: written headless to a file and read back with rerun's RRD reader."""

import numpy as np
import pytest

pytest.importorskip("rerun")

from priorlab.errors import PriorlabError  # noqa: E402
from priorlab.sceneflow.cli import main  # noqa: E402
from priorlab.sceneflow.rerun_view import recording_entities, write_pair_rrd  # noqa: E402
from priorlab.sceneflow.synthetic import synthetic_pair, synthetic_sequence  # noqa: E402

TINY = dict(n_beams=16, azimuth_resolution=1.0, n_objects=6, n_pedestrians=2)
CLOUDS = {"/world/pc1", "/world/pc2", "/world/flow"}


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rrd")
    p = synthetic_pair(seed=0, **TINY)
    np.save(d / "a.npy", p["pc0"])
    np.save(d / "b.npy", p["pc1"])
    np.savetxt(d / "ego.txt", p["ego_motion"][:3].reshape(1, 12))
    np.savez(d / "gt.npz", flow=p["flow"], eval_mask=p["eval_mask"])
    return d, p


def test_pair_recording_has_every_layer(tmp_path, pair_files):
    _, p = pair_files
    labels = np.where(p["is_ground0"], -1, p["object_id0"])
    path = write_pair_rrd(tmp_path / "pair.rrd", p["pc0"], p["pc1"], p["flow"] * 0.9, gt=p["flow"],
                          eval_mask=p["eval_mask"], labels=labels, ego_motion=p["ego_motion"])
    ents = recording_entities(path)
    assert CLOUDS | {"/world/gt_flow", "/world/error", "/world/clusters", "/stats/epe"} <= set(ents)
    assert not list(tmp_path.glob(".*tmp*"))  # written to a temp file, then renamed


def test_estimate_rrd_with_rigid_clusters_and_gt(tmp_path, pair_files):
    d, _ = pair_files
    rrd = tmp_path / "view.rrd"
    assert main(["flow", "estimate", str(d / "a.npy"), str(d / "b.npy"), "--out", str(tmp_path / "f.npz"),
                 "--method", "rigid", "--ego-motion", str(d / "ego.txt"), "--rrd", str(rrd),
                 "--gt", str(d / "gt.npz"), "--quiet"]) == 0
    ents = recording_entities(rrd)
    assert CLOUDS | {"/world/clusters", "/world/gt_flow", "/world/error"} <= set(ents)


def test_run_rrd_has_one_step_per_pair(tmp_path):
    seq = synthetic_sequence(3, seed=0, **TINY)
    d = tmp_path / "s"
    (d / "gt").mkdir(parents=True)
    for k, f in enumerate(seq):
        np.save(d / f"{k:06d}.npy", f.points.astype(np.float32))
    np.save(d / "poses.npy", seq.poses)
    np.savez(d / "gt" / "000000.npz", flow=seq.pair(0)["flow"])  # GT for the first pair only
    rrd = tmp_path / "run.rrd"
    assert main(["flow", "run", str(d), "--out", str(tmp_path / "o"), "--method", "rigid", "--rrd", str(rrd),
                 "--gt", str(d / "gt"), "--quiet"]) == 0
    ents = recording_entities(rrd)
    assert ents["/world/flow"] == 2 and ents["/world/clusters"] == 2 and ents["/world/gt_flow"] == 1


def test_rrd_option_errors(tmp_path, pair_files, capsys):
    d, p = pair_files
    base = ["flow", "estimate", str(d / "a.npy"), str(d / "b.npy"), "--out", str(tmp_path / "f.npz"),
            "--method", "rigid", "--ego-motion", str(d / "ego.txt"), "--quiet"]
    assert main(base + ["--rrd", str(tmp_path / "view.txt")]) == 2
    assert "must end in .rrd" in capsys.readouterr().err
    assert main(base + ["--gt", str(d / "gt.npz")]) == 2
    assert "--gt only feeds the --rrd recording" in capsys.readouterr().err
    with pytest.raises(PriorlabError, match="ground truth has shape"):
        write_pair_rrd(tmp_path / "x.rrd", p["pc0"], p["pc1"], p["flow"], gt=p["flow"][:-1])
    assert not list(tmp_path.glob("*.rrd")) and not list(tmp_path.glob(".*tmp*"))
