"""``priorlab flow run`` over tiny synthetic sequences (method 'rigid' with the true poses: no
optimiser), sequence discovery, resuming, bad input, and ``flow eval`` over a run folder."""

import json
import os

import numpy as np
import pytest

from priorlab.errors import PriorlabError
from priorlab.sceneflow import commands_run
from priorlab.sceneflow.cli import main
from priorlab.sceneflow.sequence import discover_sequence, relative_pose
from priorlab.sceneflow.synthetic import synthetic_sequence

TINY = dict(n_beams=16, azimuth_resolution=1.0, n_objects=6, n_pedestrians=2)
RIGID = ["--method", "rigid", "--quiet"]


def write_sequence(d, n=4, seed=0, pose_name="poses.txt"):
    """Frames 000000.npy ... with a poses file and per-frame ground truth in d/gt."""
    seq = synthetic_sequence(n, seed=seed, **TINY)
    d.mkdir(parents=True, exist_ok=True)
    (d / "gt").mkdir(exist_ok=True)
    for k, f in enumerate(seq):
        np.save(d / f"{k:06d}.npy", f.points.astype(np.float32))
    for k in range(n - 1):
        p = seq.pair(k)
        np.savez(d / "gt" / f"{k:06d}.npz", flow=p["flow"], eval_mask=p["eval_mask"],
                 classes=p["classes"], dynamic=p["dynamic"])
    if pose_name:
        np.savetxt(d / pose_name, seq.poses[:, :3, :].reshape(n, 12))
    return seq


def outputs(out):
    return sorted(p.name for p in out.iterdir() if p.suffix == ".npz")


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("seq") / "s"
    write_sequence(d)
    return d


@pytest.fixture(scope="module")
def done_run(seq_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    assert main(["flow", "run", str(seq_dir), "--out", str(out), *RIGID]) == 0
    return out


def test_run_writes_one_file_per_pair_with_the_pose_ego_motion(seq_dir, done_run):
    assert outputs(done_run) == ["000000.npz", "000001.npz", "000002.npz"]
    seq = discover_sequence(seq_dir)
    for k in range(3):
        z = np.load(done_run / f"{k:06d}.npz")
        assert z["flow"].shape == (len(np.load(seq_dir / f"{k:06d}.npy")), 3)
        np.testing.assert_allclose(z["ego_motion"], relative_pose(seq.poses[k], seq.poses[k + 1]), atol=1e-9)
        assert str(z["frame"]) == f"{k:06d}" and str(z["method"]) == "rigid"
        gt = np.load(seq_dir / "gt" / f"{k:06d}.npz")
        static = gt["eval_mask"] & ~gt["dynamic"]
        err = np.linalg.norm(z["flow"] - gt["flow"], axis=1)
        assert np.median(err[static]) < 0.02  # the true ego motion: static points are right


def test_rerun_skips_finished_frames_and_redoes_a_missing_one(seq_dir, done_run, capsys):
    stamps = {p.name: p.stat().st_mtime_ns for p in done_run.glob("*.npz")}
    capsys.readouterr()
    assert main(["flow", "run", str(seq_dir), "--out", str(done_run), *RIGID]) == 0
    assert "3 already done (skipped), 0 to estimate" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in done_run.glob("*.npz")} == stamps


def test_an_interrupted_run_keeps_finished_frames_and_resumes(seq_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real = commands_run.compute_pair

    def stop_at_second(task, threads=1):
        if task.k == 1:
            raise KeyboardInterrupt
        return real(task, threads)

    monkeypatch.setattr(commands_run, "compute_pair", stop_at_second)
    assert main(["flow", "run", str(seq_dir), "--out", str(out), *RIGID]) == 130
    assert outputs(out) == ["000000.npz"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no half-written file left
    (out / ".000001.tmp99999999.npz").write_bytes(b"half")  # a killed writer's leftover never counts
    monkeypatch.setattr(commands_run, "compute_pair", real)
    capsys.readouterr()
    assert main(["flow", "run", str(seq_dir), "--out", str(out), *RIGID]) == 0
    assert "1 already done (skipped), 2 to estimate" in capsys.readouterr().out
    assert outputs(out) == ["000000.npz", "000001.npz", "000002.npz"]  # and the leftover is gone


def test_rerun_with_other_settings_is_refused(seq_dir, done_run, capsys):
    assert main(["flow", "run", str(seq_dir), "--out", str(done_run), "--method", "fast", "--quiet"]) == 1
    assert "other settings (method='rigid' (now 'fast')" in capsys.readouterr().err


def test_two_local_jobs_give_the_same_flow(seq_dir, done_run, tmp_path):
    out = tmp_path / "out"
    assert main(["flow", "run", str(seq_dir), "--out", str(out), "--jobs", "2", *RIGID]) == 0
    for name in outputs(done_run):
        np.testing.assert_array_equal(np.load(out / name)["flow"], np.load(done_run / name)["flow"])


def test_ray_executor_gives_the_same_flow(seq_dir, done_run, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    assert main(["flow", "run", str(seq_dir), "--out", str(out), "--executor", "ray", *RIGID]) == 0
    for name in outputs(done_run):
        np.testing.assert_array_equal(np.load(out / name)["flow"], np.load(done_run / name)["flow"])


def test_eval_over_a_run_folder(seq_dir, done_run, capsys):
    capsys.readouterr()
    assert main(["flow", "eval", str(done_run), str(seq_dir / "gt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frames"] == 3 and set(res["per_frame"]) == {"000000", "000001", "000002"}
    epe = [m["EPE3D"] for m in res["per_frame"].values()]
    assert res["mean"]["EPE3D"] == pytest.approx(np.mean(epe))
    assert main(["flow", "eval", str(done_run / "000001.npz"), str(seq_dir / "gt" / "000001.npz"),
                 "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["EPE3D"] == pytest.approx(res["per_frame"]["000001"]["EPE3D"])
    assert main(["flow", "eval", str(done_run), str(seq_dir / "gt")]) == 0
    assert "mean over frames" in capsys.readouterr().out


def test_kitti_layout_converts_camera_poses_with_calib_tr(tmp_path):
    seq = synthetic_sequence(3, seed=1, **TINY)
    (tmp_path / "velodyne").mkdir()
    for k, f in enumerate(seq):
        f.points.astype(np.float32).tofile(tmp_path / "velodyne" / f"{k:06d}.bin")
    Tr = np.eye(4)
    Tr[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # velodyne -> camera axes
    cam = Tr @ seq.poses @ np.linalg.inv(Tr)
    np.savetxt(tmp_path / "poses.txt", cam[:, :3, :].reshape(3, 12))
    (tmp_path / "calib.txt").write_text("P0: " + " ".join(["0"] * 12) + "\nTr: "
                                        + " ".join(map(str, Tr[:3].ravel())) + "\n")
    s = discover_sequence(tmp_path)
    assert s.kind == "kitti" and s.names == ["000000", "000001", "000002"]
    np.testing.assert_allclose(s.poses, seq.poses, atol=1e-9)


def test_shared_kitti_folder_is_found_with_its_icp_poses(sample):
    s = discover_sequence(sample("kitti_velodyne_seq6_patchworkpp"))
    assert s.kind == "folder" and len(s) == 6 and s.poses.shape == (6, 4, 4)
    assert s.pose_source.endswith("icp_poses_frame_k_to_frame0.txt") and s.gaps == []
    assert 0.6 < -s.ego_motion(0)[0, 3] < 0.8  # ~0.68 m forward per frame


# ---- bad input -----------------------------------------------------------------------------


def err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_empty_folder_and_single_frame(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["flow", "run", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "no point-cloud frames found" in err_line(capsys)
    one = tmp_path / "one"
    one.mkdir()
    np.save(one / "0.npy", np.random.rand(50, 3).astype(np.float32))
    assert main(["flow", "run", str(one), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "found 1 frame(s)" in err_line(capsys)


def test_pose_count_must_match_the_frames(tmp_path, capsys):
    write_sequence(tmp_path / "s", n=3)
    poses = np.loadtxt(tmp_path / "s" / "poses.txt")
    np.savetxt(tmp_path / "s" / "poses.txt", poses[:2])
    assert main(["flow", "run", str(tmp_path / "s"), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "2 poses for 3 frames" in err_line(capsys)


def test_several_pose_files_or_frame_types_are_ambiguous(tmp_path):
    write_sequence(tmp_path / "s", n=3)
    (tmp_path / "s" / "poses_b.txt").write_text((tmp_path / "s" / "poses.txt").read_text())
    with pytest.raises(PriorlabError, match="several pose files"):
        discover_sequence(tmp_path / "s")
    os.remove(tmp_path / "s" / "poses_b.txt")
    np.random.rand(10, 4).astype(np.float32).tofile(tmp_path / "s" / "000009.bin")
    with pytest.raises(PriorlabError, match="several types"):
        discover_sequence(tmp_path / "s")


def test_corrupt_frame_stops_with_one_line_or_is_skipped(tmp_path, capsys):
    d = tmp_path / "s"
    write_sequence(d, n=4)
    (d / "000002.npy").write_bytes(b"not a numpy file")
    assert main(["flow", "run", str(d), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "000002.npy" in err_line(capsys)
    assert outputs(tmp_path / "o") == ["000000.npz"]  # the finished frame is kept
    assert main(["flow", "run", str(d), "--out", str(tmp_path / "o"), "--skip-bad", *RIGID]) == 0
    text = capsys.readouterr().out
    assert "skipped 2 pair(s) (--skip-bad)" in text and "wrote 1 of 3 outputs" in text


def test_frame_with_too_few_points(tmp_path, capsys):
    d = tmp_path / "s"
    write_sequence(d, n=3)
    np.save(d / "000001.npy", np.random.rand(5, 3).astype(np.float32))
    assert main(["flow", "run", str(d), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "000001.npy: 5 usable points, method rigid needs at least 20" in err_line(capsys)


def test_missing_frame_in_the_numbering(tmp_path, capsys):
    d = tmp_path / "s"
    write_sequence(d, n=5, pose_name=None)
    os.remove(d / "000002.npy")
    s = discover_sequence(d)
    assert s.names == ["000000", "000001", "000003", "000004"] and s.gaps == [1]
    assert main(["flow", "run", str(d), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "missing between 000001 and 000003" in err_line(capsys)


def test_bad_options(seq_dir, tmp_path, capsys):
    assert main(["flow", "run", str(seq_dir), "--out", str(tmp_path / "o"), "--jobs", "0", *RIGID]) == 2
    assert "--jobs" in err_line(capsys)
    assert main(["flow", "run", str(seq_dir / "000000.npy"), "--out", str(tmp_path / "o"), *RIGID]) == 1
    assert "is a file" in err_line(capsys)


def test_eval_reads_av2_style_label_files(seq_dir, done_run, tmp_path, capsys):
    import pandas as pd

    gt = np.load(seq_dir / "gt" / "000001.npz")
    (tmp_path / "flow_labels").mkdir()
    pd.DataFrame({"flow_tx_m": gt["flow"][:, 0], "flow_ty_m": gt["flow"][:, 1], "flow_tz_m": gt["flow"][:, 2],
                  "classes": gt["classes"], "dynamic": gt["dynamic"], "is_valid": gt["eval_mask"]}
                 ).to_feather(tmp_path / "flow_labels" / "000001.feather")
    capsys.readouterr()
    assert main(["flow", "eval", str(done_run), str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["frames"] == 1 and res["without_gt"] == ["000000", "000002"]
    assert main(["flow", "eval", str(done_run / "000001.npz"), str(seq_dir / "gt" / "000001.npz"),
                 "--json"]) == 0
    assert res["mean"]["EPE3D"] == pytest.approx(json.loads(capsys.readouterr().out)["EPE3D"], rel=1e-5)


def test_optimised_method_fits_filtered_points_and_writes_every_point(seq_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["flow", "run", str(seq_dir), "--out", str(out), "--method", "nsfp", "--max-iters", "5",
                 "--points", "256", "--remove-ground", "--threads", "1", "--quiet"]) == 0
    for k in range(3):
        z = np.load(out / f"{k:06d}.npz")
        assert z["flow"].shape == (len(np.load(seq_dir / f"{k:06d}.npy")), 3) and "ego_motion" not in z
        assert int(z["iterations"]) <= 5 and np.isfinite(z["flow"]).all()
