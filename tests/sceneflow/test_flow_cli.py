"""``priorlab flow ...`` end to end on a tiny synthetic pair (few iterations), and its error paths."""

import json
import subprocess
from pathlib import Path
import sys

import numpy as np
import pytest

from priorlab.sceneflow.cli import add_flow_subparser, main, run_flow
from priorlab.sceneflow.commands_sequences import read_poses
from priorlab.sceneflow.synthetic import synthetic_sequence

TINY = dict(n_beams=8, azimuth_resolution=2.0, n_objects=6, n_pedestrians=2)
FIT = ["--method", "nsfp", "--max-iters", "8", "--points", "256", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("flowcli")
    seq = synthetic_sequence(3, seed=0, **TINY)
    for k, f in enumerate(seq):
        np.save(d / f"f{k}.npy", f.points)
    p = seq.pair(0)
    np.savez(
        d / "gt.npz", flow=p["flow"], eval_mask=p["eval_mask"], classes=p["classes"], dynamic=p["dynamic"]
    )
    np.savez(d / "gt_short.npz", flow=p["flow"][:-5])
    np.save(d / "empty.npy", np.zeros((0, 3), np.float32))
    np.savetxt(d / "poses.txt", seq.relative_poses[:, :3, :].reshape(3, 12))
    np.savetxt(d / "poses2.txt", seq.relative_poses[:2, :3, :].reshape(2, 12))
    return d, seq


def _err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


def test_estimate_then_eval_json(files, capsys, tmp_path):
    d, seq = files
    out = tmp_path / "flow.npz"
    rc = main(
        [
            "flow",
            "estimate",
            str(d / "f0.npy"),
            str(d / "f1.npy"),
            "--out",
            str(out),
            "--remove-ground",
            "--max-range",
            "40",
            *FIT,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "iterations" in text and "final loss" in text
    z = np.load(out)
    assert (
        z["flow"].shape == (len(seq[0]), 3) and np.isfinite(z["flow"]).all()
    )  # every input point, even filtered ones
    assert int(z["iterations"]) == 8 and not bool(z["interrupted"])
    rc = main(["flow", "eval", str(out), str(d / "gt.npz"), "--json"])
    assert rc == 0
    m = json.loads(capsys.readouterr().out)
    for k in ("EPE3D", "Acc5", "Acc10", "Outliers", "angle_error", "EPE_FD", "EPE_FS", "EPE_BS", "EPE_3way"):
        assert k in m
    assert m["n_points"] == int(seq.pair(0)["eval_mask"].sum())
    assert main(["flow", "eval", str(out), str(d / "gt.npz")]) == 0
    assert "EPE3D" in capsys.readouterr().out


def test_ctrl_c_writes_best_flow_so_far(files, capsys, tmp_path, monkeypatch):
    import priorlab.sceneflow.estimate as est

    real = est.estimate_flow

    def interrupted_at_4(*a, **k):
        def callback(it, loss):
            if it == 3:
                raise KeyboardInterrupt

        return real(*a, callback=callback, **k)

    monkeypatch.setattr(est, "estimate_flow", interrupted_at_4)
    d, seq = files
    out = tmp_path / "flow.npz"
    assert main(["flow", "estimate", str(d / "f0.npy"), str(d / "f1.npy"), "--out", str(out), *FIT]) == 130
    assert "interrupted: wrote the best flow so far" in capsys.readouterr().out
    z = np.load(out)
    assert bool(z["interrupted"]) and z["flow"].shape == (len(seq[0]), 3)
    # multi-pair commands stop at the interrupted pair and write nothing
    acc = tmp_path / "acc.npz"
    assert (
        main(
            [
                "flow",
                "accumulate",
                str(d / "f0.npy"),
                str(d / "f1.npy"),
                str(d / "f2.npy"),
                "--out",
                str(acc),
                *FIT,
            ]
        )
        == 130
    )
    assert "interrupted" in capsys.readouterr().err and not acc.exists()


def test_bad_inputs_exit_1_for_data_2_for_usage(files, capsys, tmp_path):
    d, _ = files
    out = str(tmp_path / "f.npz")
    cases = [
        (["flow", "estimate", str(d / "nope.npy"), str(d / "f1.npy"), "--out", out, *FIT], "not found", 1),
        (["flow", "estimate", str(d / "empty.npy"), str(d / "f1.npy"), "--out", out, *FIT], "no points", 1),
        (
            [
                "flow",
                "estimate",
                str(d / "f0.npy"),
                str(d / "f1.npy"),
                "--out",
                str(tmp_path / "f.txt"),
                *FIT,
            ],
            ".npz",
            2,
        ),
        (
            [
                "flow",
                "estimate",
                str(d / "f0.npy"),
                str(d / "f1.npy"),
                "--out",
                out,
                "--max-range",
                "0.5",
                *FIT,
            ],
            "left",
            1,
        ),
        (
            [
                "flow",
                "estimate",
                str(d / "f0.npy"),
                str(d / "f1.npy"),
                "--out",
                out,
                "--points",
                "1",
                *FIT[:4],
                *FIT[6:],
            ],
            "--points",
            2,
        ),
        (["flow", "eval", str(d / "gt.npz"), str(d / "gt_short.npz")], "rows", 1),
        (["flow", "eval", str(d / "gt.npz"), str(d / "f0.npy")], "npz", 1),
        (
            ["flow", "accumulate", str(d / "f0.npy"), str(d / "f1.npy"), "--out", out, "--method", "none"],
            "poses",
            2,
        ),
        (
            [
                "flow",
                "accumulate",
                str(d / "f0.npy"),
                str(d / "f1.npy"),
                str(d / "f2.npy"),
                "--out",
                out,
                "--poses",
                str(d / "poses2.txt"),
                "--method",
                "none",
            ],
            "2 poses for 3 frames",
            1,
        ),
    ]
    for argv, needle, code in cases:
        assert main(argv) == code, argv
        line = _err_line(capsys)
        assert needle in line, (argv, line)


def test_accumulate_with_poses_and_flow(files, capsys, tmp_path):
    d, seq = files
    frames = [str(d / f"f{k}.npy") for k in range(3)]
    out, png = tmp_path / "cloud.npz", tmp_path / "cloud.png"
    rc = main(
        [
            "flow",
            "accumulate",
            *frames,
            "--out",
            str(out),
            "--poses",
            str(d / "poses.txt"),
            "--method",
            "none",
            "--png",
            str(png),
            "--quiet",
        ]
    )
    assert rc == 0
    z = np.load(out)
    assert z["points"].shape == (sum(len(f) for f in seq), 3)
    assert set(np.unique(z["frame"])) == {0, 1, 2}
    assert png.stat().st_size > 10_000
    rc = main(
        [
            "flow",
            "accumulate",
            *frames[:2],
            "--out",
            str(out),
            "--poses",
            str(d / "poses.txt").replace("poses", "poses2"),
            "--remove-ground",
            *FIT,
        ]
    )
    assert rc == 0
    assert "poses + nsfp" in capsys.readouterr().out


def test_demo_tiny(tmp_path, capsys):
    rc = main(
        [
            "flow",
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--frames",
            "3",
            "--beams",
            "8",
            "--azimuth-res",
            "2",
            *FIT,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "EPE3D" in text and "trajectory endpoint error" in text
    for name in (
        "flow_bev.png",
        "flow_gt.png",
        "error_map.png",
        "trajectories.png",
        "accumulated.png",
        "metrics.json",
    ):
        assert (tmp_path / "demo" / name).stat().st_size > 500
    rep = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert len(rep["trajectory_endpoint_error"]["all"]) == 3


def test_read_poses_formats(tmp_path):
    P = np.tile(np.eye(4), (2, 1, 1))
    P[1, 0, 3] = 1.5
    (tmp_path / "a.txt").write_text(
        "# header\n0 "
        + " ".join(map(str, P[0, :3].ravel()))
        + "\n1 "
        + " ".join(map(str, P[1, :3].ravel()))
        + "\n"
    )
    np.testing.assert_allclose(read_poses(tmp_path / "a.txt", 2), P)
    np.save(tmp_path / "b.npy", P)
    np.testing.assert_allclose(read_poses(tmp_path / "b.npy"), P)


def test_parser_wiring_and_module_entry_point(files):
    import argparse

    parser = argparse.ArgumentParser(prog="priorlab")
    sub = parser.add_subparsers(dest="command")
    add_flow_subparser(sub)
    args = parser.parse_args(["flow", "eval", "a.npz", "b.npz", "--json"])
    assert args.flow_command == "eval" and args.func is run_flow
    d, _ = files
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "priorlab.sceneflow.cli",
            "flow",
            "eval",
            str(d / "missing.npz"),
            str(d / "gt.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip().splitlines()[-1]]  # one line, no traceback
    assert r.stderr.startswith("error: ") and "not found" in r.stderr


def test_accumulate_real_kitti_scans_with_icp_poses(sceneflow_data, tmp_path):
    """6 real KITTI scans + the shared ICP poses (text file with frame numbers and a comment line):
    static structure lines up after accumulation (skips when the shared data are absent)."""
    from scipy.spatial import cKDTree

    k = sceneflow_data / "kitti_velodyne_seq6_patchworkpp"
    frames = [str(k / f"00000{i}.bin") for i in range(6)]
    poses = str(k / "icp_poses_frame_k_to_frame0.txt")
    if not all(Path(f).exists() for f in frames + [poses]):
        pytest.skip(f"KITTI sample scans not found in {k}")
    out = tmp_path / "kitti.npz"
    assert (
        main(
            [
                "flow",
                "accumulate",
                *frames,
                "--poses",
                poses,
                "--method",
                "none",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    z = np.load(out)
    pts, fr = z["points"], z["frame"]
    assert set(np.unique(fr)) == set(range(6))
    keep = (np.linalg.norm(pts[:, :2], axis=1) < 30) & (
        pts[:, 2] > -1.2
    )  # above the ground (sensor 1.73 m up)
    tree = cKDTree(pts[keep & (fr == 0)])
    aligned = np.median(tree.query(pts[keep & (fr == 5)])[0])
    raw = np.fromfile(frames[5], np.float32).reshape(-1, 4)[:, :3]  # scan 5 in its own frame, 3.6 m ahead
    rk = (np.linalg.norm(raw[:, :2], axis=1) < 30) & (raw[:, 2] > -1.2)
    unaligned = np.median(tree.query(raw[rk])[0])
    assert aligned < 0.1 < unaligned


def test_rigid_uses_the_given_ego_motion_and_refuses_a_bad_pose_file(files, capsys, tmp_path):
    d, seq = files
    pair = seq.pair(0)
    T = pair["ego_motion"]
    np.savetxt(tmp_path / "pose.txt", T[:3].reshape(1, 12))  # a KITTI-style 3x4 row
    out = tmp_path / "flow.npz"
    argv = ["flow", "estimate", str(d / "f0.npy"), str(d / "f1.npy"), "--out", str(out), "--quiet"]
    assert main([*argv, "--ego-motion", str(tmp_path / "pose.txt")]) == 0
    assert "ego motion given" in capsys.readouterr().out
    pc0 = np.load(d / "f0.npy").astype(np.float64)
    ego_flow = pc0 @ T[:3, :3].T + T[:3, 3] - pc0
    static = np.linalg.norm(np.load(out)["flow"] - ego_flow, axis=1) < 1e-4
    assert static.mean() > 0.5  # every point off the moving clusters takes exactly the given motion
    np.savetxt(tmp_path / "short.txt", np.ones(5))
    sheared = T[:3].copy()
    sheared[0, 1] += 0.5
    np.savetxt(tmp_path / "sheared.txt", sheared.reshape(1, 12))
    for name, needle in (("short.txt", "5 values"), ("sheared.txt", "rotation"), ("nope.txt", "not found")):
        assert main([*argv, "--ego-motion", str(tmp_path / name)]) == 1
        assert needle in _err_line(capsys)
