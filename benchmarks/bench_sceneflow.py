"""Scene-flow cost on the real Argoverse 2 pair: Fast Neural Scene Flow vs Neural Scene Flow Prior (CPU).

Measures, on the shared AV2 validation pair (non-ground points inside a 35 m radius and -1..3 m in z,
so the FNSF grid at its default 0.1 m voxel stays under 1 GiB):

* time per pair (setup incl. the FNSF grid + loop + evaluating the field at every point) and per
  iteration (loop only) at 2,048 / 8,192 / all points, fast vs NSFP, and their ratios;
* EPE (and Acc5/Acc10, 3-way EPE) of both at 8,192 points, on every non-ground point of the crop;
* the share of an NSFP iteration spent in nearest-neighbour search vs the MLPs at 8,192 points;
* NSFP iteration time vs a bare forward+backward of its two MLPs (ratio);
* peak memory of building the FNSF distance grid (tracemalloc) and the grid's own size.

Iterations are CAPPED so the whole run stays well under 10 minutes on 2 shared CPU cores (the caps are
printed); with early stopping the official settings may stop earlier. Results go to
benchmarks/results/sceneflow.json.

    python benchmarks/bench_sceneflow.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from priorlab.sceneflow import (
    DistanceTransform,
    crop_range,
    estimate_flow,
    load_av2_pair,
    scene_flow_metrics,
    threeway_epe,
)
from priorlab.sceneflow.io import sample_data_dir
from priorlab.sceneflow.losses import KDIndex
from priorlab.sceneflow.nsfp import NSFP_DEFAULTS, NSFPProblem

REPO = Path(__file__).resolve().parents[1]
PAIR = "av2_api_val_pair/pair_7fab2350_315966265259836000.npz"
CROP = dict(max_range=35.0, planar=True, z_range=(-1.0, 3.0))


def load_cropped():
    pair = load_av2_pair(sample_data_dir() / PAIR)
    m0 = pair["eval_mask"] & crop_range(pair["pc0"], **CROP)
    m1 = ~pair["is_ground1_map"] & crop_range(pair["pc1"], **CROP)
    return {
        "pc0": pair["pc0"][m0],
        "pc1": pair["pc1"][m1],
        "flow": pair["flow"][m0],
        "classes": pair["classes"][m0],
        "dynamic": pair["dynamic"][m0],
    }


def run(method, d, points, iters):
    res = estimate_flow(d["pc0"], d["pc1"], method, points=points, max_iters=iters, progress=False, seed=0)
    m = scene_flow_metrics(res.flow, d["flow"])
    m3 = threeway_epe(res.flow, d["flow"], d["classes"], d["dynamic"])
    return {
        "time_s": res.time_s,
        "iterations": res.iterations,
        "setup_s": res.info["setup_s"],
        "ms_per_iter": 1000 * res.info["loop_s"] / max(res.iterations, 1),
        "eval_s": res.info["eval_s"],
        "stop": res.info["stop_reason"],
        "EPE3D": m["EPE3D"],
        "Acc5": m["Acc5"],
        "Acc10": m["Acc10"],
        "EPE_3way": m3["EPE_3way"],
        "EPE_FD": m3["EPE_FD"],
        "fit_points": res.info["fit_points"],
        **({"grid_shape": res.info["grid_shape"]} if "grid_shape" in res.info else {}),
    }


def nsfp_breakdown(d, points, iters):
    """Time NN search, MLP forward, and backward+step separately inside NSFP iterations."""
    rng = np.random.default_rng(0)
    p1 = torch.from_numpy(d["pc0"][rng.choice(len(d["pc0"]), min(points, len(d["pc0"])), replace=False)])
    p2 = torch.from_numpy(d["pc1"][rng.choice(len(d["pc1"]), min(points, len(d["pc1"])), replace=False)])
    prob = NSFPProblem(p1, p2, dict(NSFP_DEFAULTS), NSFP_DEFAULTS["lr"], 0, torch.device("cpu"))
    t_nn, t_mlp, t_back, t_total = [], [], [], []
    trunc = prob.truncate

    def cham(a, b, b_index):
        t = time.perf_counter()
        i_ab = b_index.query_indices(a)
        i_ba = KDIndex(a.detach()).query_indices(b)
        nn_time = time.perf_counter() - t
        d_ab = ((a - b[i_ab]) ** 2).sum(-1)
        d_ba = ((b - a[i_ba]) ** 2).sum(-1)
        loss = torch.where(d_ab < trunc, d_ab, 0).mean() + torch.where(d_ba < trunc, d_ba, 0).mean()
        return loss, nn_time

    for it in range(iters):
        t0 = time.perf_counter()
        prob.optimizer.zero_grad(set_to_none=True)
        t = time.perf_counter()
        deformed = prob.pc1 + prob.net(prob.pc1)
        mlp = time.perf_counter() - t
        l1, n1 = cham(deformed, prob.pc2, prob.idx_pc2)
        t = time.perf_counter()
        back = deformed - prob.net_inv(deformed)
        mlp += time.perf_counter() - t
        l2, n2 = cham(back, prob.pc1, prob.idx_pc1)
        t = time.perf_counter()
        (l1 + l2).backward()
        prob.optimizer.step()
        tb = time.perf_counter() - t
        if it >= 2:  # warm-up
            t_nn.append(n1 + n2)
            t_mlp.append(mlp)
            t_back.append(tb)
            t_total.append(time.perf_counter() - t0)
    total = statistics.median(t_total)

    # bare forward + backward of the two MLPs on the same points (no loss, no NN, no optimiser step)
    net, net_inv = prob.net, prob.net_inv
    bare = []
    for it in range(iters):
        t = time.perf_counter()
        out = net(prob.pc1)
        out2 = net_inv(prob.pc1 + out)
        (out.sum() + out2.sum()).backward()
        if it >= 2:
            bare.append(time.perf_counter() - t)
    bare_t = statistics.median(bare)
    return {
        "points": len(p1),
        "iterations_timed": len(t_total),
        "iter_ms": 1000 * total,
        "nn_ms": 1000 * statistics.median(t_nn),
        "mlp_forward_ms": 1000 * statistics.median(t_mlp),
        "backward_step_ms": 1000 * statistics.median(t_back),
        "nn_share": statistics.median(t_nn) / total,
        "mlp_share": (statistics.median(t_mlp) + statistics.median(t_back)) / total,
        "bare_mlp_fwd_bwd_ms": 1000 * bare_t,
        "iter_over_bare_mlp": total / bare_t,
    }


def grid_memory(d):
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    dt = DistanceTransform(d["pc1"], voxel_size=0.1, extra_points=d["pc0"])
    build = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "voxel_size": 0.1,
        "grid_shape": list(dt.shape),
        "grid_MiB": dt.nbytes / 2**20,
        "build_peak_MiB": peak / 2**20,
        "build_estimate_MiB": dt.build_bytes_estimate / 2**20,
        "build_s": build,
        "under_1GiB": peak < 2**30,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run, ~1-2 min)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sceneflow.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = sample_data_dir() / PAIR
    if not path.exists():
        print(f"skipped: real AV2 pair not found at {path} (set PRIORLAB_SHARED)")
        return 0
    caps = (
        {"2048": 60, "8192": 60, "full": 4, "breakdown": 8}
        if args.quick
        else {"2048": 400, "8192": 200, "full": 10, "breakdown": 15}
    )
    print(f"iteration caps (both methods; official max is 5000 with early stopping): {caps}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, load average (1 min): {load:.1f}"
    )
    d = load_cropped()
    print(f"AV2 pair, non-ground, {CROP}: pc0 {len(d['pc0'])} pts, pc1 {len(d['pc1'])} pts")

    # warm-up (first optimiser creation imports torch._dynamo; keep it out of the timings)
    estimate_flow(d["pc0"][:64], d["pc1"][:64], "nsfp", max_iters=2, progress=False)

    results = {
        "caps": caps,
        "crop": {k: list(v) if isinstance(v, tuple) else v for k, v in CROP.items()},
        "n_pc0": len(d["pc0"]),
        "n_pc1": len(d["pc1"]),
        "threads": torch.get_num_threads(),
        "load_average_at_start": load,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "runs": {},
    }
    rows = []
    for label, pts in (("2048", 2048), ("8192", 8192), ("full", None)):
        for method in ("fast", "nsfp"):
            r = run(method, d, pts, caps[label])
            results["runs"][f"{method}@{label}"] = r
            rows.append((label, method, r))
            print(
                f"  {method:4s} @ {label:5s}: {r['time_s']:7.1f} s (setup {r['setup_s']:.1f} s), "
                f"{r['iterations']:4d} it ({r['stop']}), "
                f"{r['ms_per_iter']:7.1f} ms/it, EPE {r['EPE3D']:.4f}",
                flush=True,
            )
    ratios = {}
    for label in ("2048", "8192", "full"):
        f, n = results["runs"][f"fast@{label}"], results["runs"][f"nsfp@{label}"]
        ratios[label] = {
            "time_ratio_nsfp_over_fast": n["time_s"] / f["time_s"],
            "per_iter_ratio_nsfp_over_fast": n["ms_per_iter"] / f["ms_per_iter"],
        }
    results["ratios"] = ratios
    results["nsfp_breakdown_8192"] = nsfp_breakdown(d, 8192, caps["breakdown"])
    results["fast_grid_memory"] = grid_memory(d)

    print()
    print(
        f"{'points':>6} | {'method':6} | {'time s':>7} | {'setup s':>7} | {'iters':>5} | {'ms/iter':>8} | "
        f"{'EPE3D':>6} | {'Acc5':>5} | {'Acc10':>5} | {'EPE 3way':>8}"
    )
    print("-" * 92)
    for label, method, r in rows:
        print(
            f"{label:>6} | {method:6} | {r['time_s']:7.1f} | {r['setup_s']:7.1f} | {r['iterations']:5d} | "
            f"{r['ms_per_iter']:8.1f} | "
            f"{r['EPE3D']:6.3f} | {r['Acc5']:5.3f} | {r['Acc10']:5.3f} | {r['EPE_3way']:8.3f}"
        )
    print()
    for label, r in ratios.items():
        print(
            f"NSFP / fast @ {label:>4}: total time x{r['time_ratio_nsfp_over_fast']:.1f}, "
            f"per iteration x{r['per_iter_ratio_nsfp_over_fast']:.1f}"
        )
    b = results["nsfp_breakdown_8192"]
    print(
        f"NSFP iteration @ {b['points']} pts: {b['iter_ms']:.0f} ms = "
        f"NN search {100 * b['nn_share']:.0f} % + "
        f"MLP fwd/bwd/step {100 * b['mlp_share']:.0f} %; vs bare MLP fwd+bwd "
        f"{b['bare_mlp_fwd_bwd_ms']:.0f} ms "
        f"(ratio {b['iter_over_bare_mlp']:.2f})"
    )
    g = results["fast_grid_memory"]
    print(
        f"FNSF grid @ 0.1 m: {'x'.join(map(str, g['grid_shape']))} voxels, grid {g['grid_MiB']:.0f} MiB, "
        f"build peak {g['build_peak_MiB']:.0f} MiB (estimate {g['build_estimate_MiB']:.0f} MiB), "
        f"{g['build_s']:.1f} s"
    )
    print(
        "NOTE: iteration counts are capped (see above); EPE at the caps is not the converged official number."
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
