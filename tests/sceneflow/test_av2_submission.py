"""The Argoverse 2 2024 Scene Flow Challenge writer: format checks on read-back, and
``flow run --format av2-2024`` on a synthetic AV2 log (and on the real sample log)."""

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from priorlab.errors import PriorlabError
from priorlab.sceneflow.av2_submission import (
    COLUMNS,
    frame_file,
    read_av2_submission,
    write_av2_frame,
    write_metadata,
    zip_submission,
)
from priorlab.sceneflow.cli import main
from priorlab.sceneflow.sequence import discover_sequence
from priorlab.sceneflow.synthetic import synthetic_sequence

TINY = dict(n_beams=16, azimuth_resolution=1.0, n_objects=6, n_pedestrians=2)
T0 = 315966265259836000
DT = 100_000_000  # ns, 10 Hz


def write_av2_log(log, n):
    """A synthetic AV2 log: sensors/lidar/<ts>.feather and city_SE3_egovehicle.feather."""
    seq = synthetic_sequence(n, seed=2, **TINY)
    (log / "sensors" / "lidar").mkdir(parents=True)
    rows = []
    for k, f in enumerate(seq):
        ts = T0 + k * DT
        p = f.points.astype(np.float32)
        pd.DataFrame({"x": p[:, 0], "y": p[:, 1], "z": p[:, 2]}).to_feather(
            log / "sensors" / "lidar" / f"{ts}.feather")
        qx, qy, qz, qw = Rotation.from_matrix(seq.poses[k][:3, :3]).as_quat()
        tx, ty, tz = seq.poses[k][:3, 3]
        rows.append(dict(timestamp_ns=ts, qw=qw, qx=qx, qy=qy, qz=qz, tx_m=tx, ty_m=ty, tz_m=tz))
    pd.DataFrame(rows).to_feather(log / "city_SE3_egovehicle.feather")
    return seq


def test_frame_round_trip_has_the_challenge_columns_and_dtypes(tmp_path):
    flow = np.random.default_rng(0).normal(size=(100, 3))
    write_av2_frame(frame_file(tmp_path, "log-a", 5), flow)
    write_metadata(tmp_path)
    sub = read_av2_submission(tmp_path, expected_rows={"log-a/0000000005.feather": 100})
    assert sub["metadata"] == {"Is Supervised?": False}
    df = sub["frames"]["log-a/0000000005.feather"]
    assert tuple(df.columns) == COLUMNS and df["is_valid"].all()
    assert [str(df[c].dtype) for c in COLUMNS] == ["bool", "float16", "float16", "float16"]
    np.testing.assert_allclose(df[list(COLUMNS[1:])].to_numpy(np.float32), flow, atol=2e-3)
    assert not list(tmp_path.rglob(".*tmp*"))


@pytest.mark.parametrize("break_it, message", [
    (lambda d: (d / "metadata.json").unlink(), "no metadata.json"),
    (lambda d: (d / "metadata.json").write_text('{"supervised": 1}'), "Is Supervised"),
    (lambda d: (d / "log-a" / "0000000000.feather").rename(d / "log-a" / "0000000003.feather"),
     "multiple of 5"),
    (lambda d: pd.DataFrame({"is_valid": [True], "flow_tx_m": [0.0], "flow_ty_m": [0.0],
                             "flow_tz_m": [0.0]}).to_feather(d / "log-a" / "0000000000.feather"),
     "expected float16"),
    (lambda d: pd.DataFrame({"flow_tx_m": np.zeros(1, np.float16)}).to_feather(
        d / "log-a" / "0000000000.feather"), "columns"),
    (lambda d: write_av2_frame(frame_file(d, "log-a", 0), np.zeros((7, 3))), "7 rows, expected 10"),
    (lambda d: (d / "log-a" / "0000000000.feather").unlink(), "missing from the submission"),
])
def test_read_back_names_the_problem(tmp_path, break_it, message):
    write_metadata(tmp_path)
    write_av2_frame(frame_file(tmp_path, "log-a", 0), np.zeros((10, 3)))
    write_av2_frame(frame_file(tmp_path, "log-a", 5), np.zeros((10, 3)))
    break_it(tmp_path)
    with pytest.raises(PriorlabError, match=message):
        read_av2_submission(tmp_path, expected_rows={"log-a/0000000000.feather": 10})


def test_writer_refuses_bad_flow(tmp_path):
    with pytest.raises(PriorlabError, match="finite"):
        write_av2_frame(tmp_path / "a.feather", np.full((3, 3), np.nan))
    with pytest.raises(PriorlabError, match="float16 range"):
        write_av2_frame(tmp_path / "a.feather", np.full((3, 3), 1e6))


def test_run_writes_every_fifth_frame_of_an_av2_log(tmp_path):
    log = tmp_path / "0c6e62d7-bdfa-3061-8d3d-03b13aa21f68"
    seq = write_av2_log(log, 8)
    found = discover_sequence(log)
    assert found.kind == "av2" and found.log_id == log.name and found.gaps == []
    np.testing.assert_allclose(found.poses, seq.poses, atol=1e-6)
    out = tmp_path / "sub"
    assert main(["flow", "run", str(log), "--out", str(out), "--method", "rigid", "--format", "av2-2024",
                 "--quiet"]) == 0
    expected = {f"{log.name}/{k:010d}.feather": len(seq[k].points) for k in (0, 5)}
    sub = read_av2_submission(out, expected_rows=expected)
    assert sorted(sub["frames"]) == sorted(expected)
    assert json.loads((out / "metadata.json").read_text()) == {"Is Supervised?": False}
    pair = seq.pair(5)
    got = sub["frames"][f"{log.name}/0000000005.feather"][list(COLUMNS[1:])].to_numpy(np.float32)
    static = pair["eval_mask"] & ~pair["dynamic"]
    assert np.median(np.linalg.norm(got - pair["flow"], axis=1)[static]) < 0.02
    archive = zip_submission(out, tmp_path / "submission.zip")
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted(["metadata.json", *expected])


def test_av2_log_with_a_dropped_sweep_and_missing_pose(tmp_path, capsys):
    log = tmp_path / "log"
    write_av2_log(log, 5)
    (log / "sensors" / "lidar" / f"{T0 + 2 * DT}.feather").unlink()
    assert discover_sequence(log).gaps == [1]
    poses = pd.read_feather(log / "city_SE3_egovehicle.feather")
    poses[poses.timestamp_ns != T0 + 3 * DT].reset_index(drop=True).to_feather(
        log / "city_SE3_egovehicle.feather")
    with pytest.raises(PriorlabError, match=f"no ego pose for 1 of 4 sweeps \\(first: {T0 + 3 * DT}\\)"):
        discover_sequence(log)


def test_real_av2_sample_log(sample, tmp_path):
    log = sample("av2_api_val_pair/raw/7fab2350-7eaf-3b7e-a39d-6937a4c1bede")
    s = discover_sequence(log)
    assert s.kind == "av2" and len(s) == 2 and s.poses is not None
    ego = np.load(log / "ego_motion.npz")["ego_motion"].reshape(4, 4)
    np.testing.assert_allclose(s.ego_motion(0), ego, atol=2e-3)  # the file is float32 of city poses
    out = tmp_path / "sub"
    assert main(["flow", "run", str(log), "--out", str(out), "--method", "rigid", "--format", "av2-2024",
                 "--quiet"]) == 0
    read_av2_submission(out, expected_rows={f"{log.name}/0000000000.feather": 99229})
