"""Long-term correspondences: trajectory endpoint error against sequence length, and accumulation
of a real KITTI snippet.

On synthetic lidar sequences with exact trajectories, per-pair flow fields are chained through
the sequence (each pair's field queried at the already-moved points) and compared with the
true positions after k frames: the default ``rigid`` method (ego motion estimated, no poses given)
and NSFP. Two references from the same run: zero flow (points stay put in
their own frame) and ego motion only (the world taken as static, exact poses).

On the six real KITTI scans in ``../shared`` (no GT flow; ICP poses), every scan is brought into
scan 0's frame (``accumulate``) by the poses alone, and by the default ``rigid`` flow with and
without the poses; the score is the median distance from each accumulated scan's non-ground
points within 30 m to scan 0's nearest non-ground point. It is a weak judge: the poses were fitted
by ICP on nearly that objective, and the snippet is almost static.

    python benchmarks/bench_longterm.py [--quick]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from priorlab.sceneflow.synthetic import synthetic_sequence
from priorlab.sceneflow.trajectory import integrate_trajectories, make_estimator, trajectory_endpoint_error


def ego_only(seq) -> np.ndarray:
    """Frame-0 points carried to frame k by the exact ego motion alone (static world)."""
    p0 = seq.frames[0].points
    homo = np.c_[p0, np.ones(len(p0))]
    return np.stack([(np.linalg.inv(rel) @ homo.T).T[:, :3] for rel in seq.relative_poses])


def kitti_accumulation() -> dict | None:
    """Median nearest-neighbour distance (m) of accumulated scans 1..5 to scan 0, per way of aligning."""
    from scipy.spatial import cKDTree

    from priorlab.sceneflow import load_points
    from priorlab.sceneflow.commands_sequences import read_poses
    from priorlab.sceneflow.io import sample_data_dir
    from priorlab.sceneflow.preprocess import remove_ground_plane
    from priorlab.sceneflow.trajectory import accumulate

    folder = sample_data_dir() / "kitti_velodyne_seq6_patchworkpp"
    if not folder.exists():
        print(f"skipping the KITTI accumulation: {folder} not found")
        return None
    scans = [load_points(folder / f"{k:06d}.bin")[:, :3] for k in range(6)]
    poses = read_poses(folder / "icp_poses_frame_k_to_frame0.txt", len(scans))
    non_ground = [remove_ground_plane(scan) for scan in scans]
    reference = cKDTree(scans[0][non_ground[0]])

    def score(stacked):
        out = []
        for k in range(1, len(scans)):
            points = stacked[stacked[:, 3] == k][non_ground[k], :3]
            distance, _ = reference.query(points[np.linalg.norm(points[:, :2], axis=1) < 30])
            out.append(float(np.median(distance)))
        return out

    ways = {"poses only": dict(poses=poses),
            "rigid with poses": dict(fields=make_estimator("rigid"), poses=poses),
            "rigid without poses": dict(fields=make_estimator("rigid"))}
    result = {}
    for name, kwargs in ways.items():
        start = time.perf_counter()
        result[name] = {"median_nn_to_scan0_m": score(accumulate(scans, progress=False, **kwargs)),
                        "time_s": round(time.perf_counter() - start, 1)}
        scores = " ".join(f"{x:.4f}" for x in result[name]["median_nn_to_scan0_m"])
        print(f"KITTI accumulation, {name:20s} {scores}  ({result[name]['time_s']} s)")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds, frames, iters = ((0,), 3, 60) if args.quick else ((0, 1, 2), 6, 300)
    rows = {"rigid": [], "nsfp": [], "zero_flow": [], "ego_only": []}
    start = time.perf_counter()
    for seed in seeds:
        seq = synthetic_sequence(frames, seed=seed)
        f0 = seq.frames[0]
        sel = ~f0.is_ground & (np.abs(f0.points[:, :2]) <= 50).all(1)
        estimator = make_estimator("nsfp", points=2048, seed=seed, max_iters=iters, remove_ground=True,
                                   progress=False)
        rigid = make_estimator("rigid", seed=seed)
        predictions = {"rigid": integrate_trajectories(seq, rigid, progress=False),
                       "nsfp": integrate_trajectories(seq, estimator, progress=False),
                       "zero_flow": np.repeat(f0.points[None], frames, 0), "ego_only": ego_only(seq)}
        for name, traj in predictions.items():
            rows[name].append(trajectory_endpoint_error(traj, seq.trajectories, sel).tolist())
    table = {name: np.mean(v, axis=0).tolist() for name, v in rows.items()}
    print(f"trajectory endpoint error (m), mean over seeds {list(seeds)}, non-ground points within 50 m; "
          f"NSFP 2048 points, <= {iters} iterations per pair")
    print("k            " + " ".join(f"{k:>7d}" for k in range(1, frames)))
    for name, v in table.items():
        print(f"{name:<12} " + " ".join(f"{x:7.3f}" for x in v[1:]))
    ratio = [n / e for n, e in zip(table["nsfp"][1:], table["ego_only"][1:])]
    rigid_ratio = [n / e for n, e in zip(table["rigid"][1:], table["ego_only"][1:])]
    print("nsfp / ego   " + " ".join(f"{x:7.3f}" for x in ratio))
    print("rigid / ego  " + " ".join(f"{x:7.3f}" for x in rigid_ratio))
    out = Path(__file__).parent / "results" / "longterm.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"seeds": list(seeds), "frames": frames, "max_iters": iters, "points": 2048,
                               "mean_endpoint_error_m": table, "per_seed": rows,
                               "nsfp_over_ego_only": ratio, "rigid_over_ego_only": rigid_ratio,
                               "wall_s": round(time.perf_counter() - start, 1),
                               "kitti_accumulation": None if args.quick else kitti_accumulation()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
