"""Scene flow on real lidar: every method side by side on the shared Argoverse 2 and KITTI pairs (CPU).

AV2 (the shared validation pair, full resolution of the AV2 evaluation mask: |x|, |y| <= 50 m, not
ground; EPE in the AV2 convention, flow includes the ego motion):

* zero flow, ego-motion-only flow (the given pose);
* nsfp@8192 and fast@8192 as the issue measured them: both sweeps ego-compensated with the given
  pose, the map's ground removed and cropped to the evaluation box (|x|, |y| <= 50 m, z in [-3, 5] m;
  Fast-NSF's distance grid cannot span a whole sweep), the field evaluated at every eval point, ego
  flow added back;
* rigid with the given pose, map ground labels and per-point capture times; rigid with the ego
  motion *estimated* (GICP) and RANSAC ground (nothing given but the clouds and times).

Metrics: EPE, EPE on moving points (|gt - ego flow| > 0.05 m), EPE on static points, AV2 three-way
EPE and the 2024 bucketed normalised EPE; time per pair and its ratio to nsfp@8192 in the same run.

KITTI (the three lidarKITTI pairs, ego motion NOT compensated, axes rotated to z up; ground removed
with the pairs' own labels and errors taken over the non-ground points): zero, ego-only (true pose),
nsfp@8192 on non-ground points, rigid with no pose. Mean EPE and mean moving-point
EPE over the three pairs, and the total time.

The rigid method's thresholds were chosen on the AV2 pair; the KITTI pairs were not used to tune it.

    python benchmarks/bench_sceneflow_real.py [--skip-nsfp]   -> benchmarks/results/sceneflow_real.json
    python benchmarks/bench_sceneflow_real.py --table         the README's table from that file
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from priorlab.sceneflow import bucketed_epe, estimate_flow, load_av2_pair, threeway_epe

REPO = Path(__file__).resolve().parents[1]
AV2_PAIR = "av2_api_val_pair/pair_7fab2350_315966265259836000.npz"
KITTI_PAIRS = ("pair_000008.npz", "pair_000020.npz", "pair_000040.npz")
CAMERA_TO_Z_UP = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # x fwd, y left, z up
MOVING = 0.05  # m per frame after ego compensation (AV2's dynamic threshold)


def data_dir() -> Path:
    return Path(os.environ.get("PRIORLAB_SHARED", REPO.parent / "shared")) / "data" / "sceneflow"


def transform(points, T):
    return points @ T[:3, :3].T + T[:3, 3]


def errors(pred, gt, moving):
    e = np.linalg.norm(pred - gt, axis=1)
    return {"EPE": float(e.mean()), "EPE_moving": float(e[moving].mean()),
            "EPE_static": float(e[~moving].mean())}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def av2_runs(skip_nsfp: bool) -> dict:
    pair = load_av2_pair(data_dir() / AV2_PAIR)
    pc0, pc1, gt, T = pair["pc0"], pair["pc1"], pair["flow"], pair["ego_motion"]
    m = pair["eval_mask"]
    ego = transform(pc0.astype(np.float64), T) - pc0
    moving = np.linalg.norm(gt - ego, axis=1) > MOVING
    times = {"times1": pair["offset_ns0"] * 1e-9, "times2": pair["offset_ns1"] * 1e-9}
    g0, g1 = pair["is_ground0"], pair["is_ground1_map"]

    def in_box(points):  # the evaluation box; Fast-NSF's distance grid cannot span a 400 m sweep
        return (np.abs(points[:, :2]) <= 50).all(1) & (points[:, 2] >= -3) & (points[:, 2] <= 5)

    def compensated(method):
        def run():
            a = transform(pc0[~g0].astype(np.float64), T)
            b = pc1[~g1]
            grid = {"max_grid_bytes": 2 * 2**30} if method == "fast" else {}  # the box needs 1.1 GiB
            res = estimate_flow(a[in_box(a)], b[in_box(b)], method=method, points=8192, progress=False,
                                num_threads=1, **grid)
            return res.field(transform(pc0[m].astype(np.float64), T)) + ego[m]
        return run

    methods = {
        "zero": lambda: np.zeros_like(gt[m]),
        "ego-only": lambda: ego[m],
        "rigid (given pose)": lambda: estimate_flow(pc0, pc1, method="rigid", ego_motion=T, ground1=g0,
                                                    ground2=g1, **times).flow[m],
        "rigid (estimated ego)": lambda: estimate_flow(pc0, pc1, method="rigid", **times).flow[m],
    }
    if not skip_nsfp:
        methods = {**methods, "nsfp@8192": compensated("nsfp"), "fast@8192": compensated("fast")}
    out = {}
    for name, fn in methods.items():
        pred, seconds = timed(fn)
        row = errors(pred, gt[m], moving[m])
        row.update(threeway_epe(pred, gt[m], pair["classes"][m], pair["dynamic"][m]))
        bucketed = bucketed_epe(pred, gt[m], pair["classes"][m], points=pc0[m], ego_flow=ego[m])
        row["bucketed_mean_dynamic_normalized_EPE"] = bucketed["mean_dynamic_normalized_EPE"]
        row["bucketed_mean_static_EPE"] = bucketed["mean_static_EPE"]
        row["bucketed_dynamic_per_class"] = {k: v["dynamic_normalized_EPE"]
                                             for k, v in bucketed["classes"].items()}
        row["time_s"] = seconds
        out[name] = row
        print(f"AV2   {name:22s} EPE {row['EPE']:.4f}  moving {row['EPE_moving']:.4f}  "
              f"static {row['EPE_static']:.4f}  3-way {row['EPE_3way']:.4f}  {seconds:.1f} s", flush=True)
    return {"n_eval": int(m.sum()), "n_moving": int(moving[m].sum()), "methods": out,
            "ego_check": ego_check(pc0, pc1, T, m, g0, g1, moving)}


def ego_check(pc0, pc1, T, m, g0, g1, moving) -> dict:
    """How far the estimated ego motion is from the given pose (mean displacement over the eval
    points), and which of the two aligns the sweeps' static structure better: the mean distance
    (capped at 0.3 m) from each static non-ground sweep-1 point, moved by the transform, to its
    nearest non-ground sweep-2 point."""
    from scipy.spatial import cKDTree

    from priorlab.sceneflow.ego import estimate_ego_motion

    estimated = estimate_ego_motion(pc0, pc1)
    p0 = pc0.astype(np.float64)
    tree = cKDTree(pc1[~g1])
    static = p0[~g0 & ~moving]

    def residual(pose):
        dist, _ = tree.query(transform(static, pose), distance_upper_bound=0.3)
        return float(np.minimum(dist, 0.3).mean())

    row = {"mean_displacement_vs_given_m": float(np.linalg.norm(
               transform(p0[m], estimated) - transform(p0[m], T), axis=1).mean()),
           "alignment_residual_given_m": residual(T), "alignment_residual_estimated_m": residual(estimated)}
    print(f"AV2   ego check: estimated vs given {row['mean_displacement_vs_given_m']:.4f} m; alignment "
          f"residual given {row['alignment_residual_given_m']:.4f}, estimated "
          f"{row['alignment_residual_estimated_m']:.4f} m", flush=True)
    return row


def kitti_runs(skip_nsfp: bool) -> dict:
    R = np.eye(4)
    R[:3, :3] = CAMERA_TO_Z_UP
    per_method: dict[str, list] = {}
    for name in KITTI_PAIRS:
        d = np.load(data_dir() / "lidarkitti_dev" / name)
        a, b = d["pc1"] @ CAMERA_TO_Z_UP.T, d["pc2"] @ CAMERA_TO_Z_UP.T
        gt = d["flow"] @ CAMERA_TO_Z_UP.T
        T = R @ d["ego_T_pc1_to_pc2"] @ R.T
        moving, g1, g2 = d["moving"], d["ground1"], d["ground2"]

        def nsfp():
            res = estimate_flow(a[~g1], b[~g2], method="nsfp", points=8192, progress=False, num_threads=1)
            return res.field(a)

        methods = {
            "zero": lambda: np.zeros_like(gt),
            "ego-only (true pose)": lambda: transform(a.astype(np.float64), T) - a,
            "rigid (no pose)": lambda: estimate_flow(a, b, method="rigid", ground1=g1, ground2=g2).flow,
        }
        if not skip_nsfp:
            methods["nsfp@8192"] = nsfp
        for method, fn in methods.items():
            pred, seconds = timed(fn)
            row = {"pair": name, **errors(pred[~g1], gt[~g1], moving[~g1]), "time_s": seconds}
            per_method.setdefault(method, []).append(row)
    out = {}
    for method, rows in per_method.items():
        out[method] = {"mean_EPE": float(np.mean([r["EPE"] for r in rows])),
                       "mean_EPE_moving": float(np.mean([r["EPE_moving"] for r in rows])),
                       "total_time_s": float(sum(r["time_s"] for r in rows)), "pairs": rows}
        print(f"KITTI {method:22s} mean EPE {out[method]['mean_EPE']:.4f}  moving "
              f"{out[method]['mean_EPE_moving']:.4f}  {out[method]['total_time_s']:.1f} s", flush=True)
    return out


RESULT = REPO / "benchmarks" / "results" / "sceneflow_real.json"


def table(result: dict) -> str:
    """The README's scene-flow table (markdown) from a result of this benchmark."""
    av2, kitti = result["av2"]["methods"], result["kitti"]
    lines = ["| AV2 pair (eval mask) | EPE (m) | moving (m) | static (m) | 3-way EPE | bucketed dynamic "
             "(norm.) | time (s) | time / nsfp@8192 |", "|---|---|---|---|---|---|---|---|"]
    for name, r in av2.items():
        ratio = r.get("time_ratio_vs_nsfp8192")
        lines.append(f"| {name} | {r['EPE']:.4f} | {r['EPE_moving']:.3f} | {r['EPE_static']:.4f} | "
                     f"{r['EPE_3way']:.4f} | {r['bucketed_mean_dynamic_normalized_EPE']:.3f} | "
                     f"{r['time_s']:.1f} | {'' if ratio is None else f'{ratio:.2f}'} |")
    check = result["av2"].get("ego_check")
    if check:
        given, estimated = check["alignment_residual_given_m"], check["alignment_residual_estimated_m"]
        verdict = "better" if estimated < given else "worse"
        lines += ["", f"Ego motion on the AV2 pair: the GICP estimate is "
                      f"{check['mean_displacement_vs_given_m']:.4f} m from the given pose (mean over the "
                      f"eval points) and aligns the static non-ground points {verdict} (mean nearest-"
                      f"neighbour distance {estimated:.4f} m, with the pose {given:.4f} m)."]
    lines += ["", "| KITTI, 3 pairs (non-ground) | mean EPE (m) | mean moving EPE (m) | time for 3 (s) |",
              "|---|---|---|---|"]
    for name, r in kitti.items():
        lines.append(f"| {name} | {r['mean_EPE']:.4f} | {r['mean_EPE_moving']:.3f} | "
                     f"{r['total_time_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-nsfp", action="store_true", help="skip the slow neural methods")
    parser.add_argument("--table", action="store_true", help="print the README table from the last result")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULT.read_text())))
        return
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_average_at_start": os.getloadavg()[0], "av2": av2_runs(args.skip_nsfp),
              "kitti": kitti_runs(args.skip_nsfp)}
    av2 = result["av2"]["methods"]
    if "nsfp@8192" in av2:
        for name, row in av2.items():
            row["time_ratio_vs_nsfp8192"] = row["time_s"] / av2["nsfp@8192"]["time_s"]
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
