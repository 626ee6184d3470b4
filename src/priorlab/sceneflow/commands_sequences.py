"""The ``flow accumulate`` and ``flow demo`` commands (several sweeps), and the pose reader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError, UsageError


from priorlab.sceneflow.commands import (
    _check_fit_args,
    _estimator,
    _load_cloud,
    _out_path,
    _print_metrics,
    _writable_folder,
)


def read_poses(path, n: int | None = None) -> np.ndarray:
    """(T,4,4) poses from a text file (12 or 16 numbers per line, optional leading frame number,
    '#' comments) or .npy/.npz (T,4,4)/(T,3,4)."""
    p = Path(path)
    if not p.exists():
        raise PriorlabError(f"pose file not found: {str(p)!r}")
    if p.suffix.lower() in (".npy", ".npz"):
        try:
            z = np.load(p, allow_pickle=False)
            a = z[z.files[0] if "poses" not in z.files else "poses"] if p.suffix.lower() == ".npz" else z
        except Exception as e:  # noqa: BLE001
            raise PriorlabError(
                f"cannot read pose file {str(p)!r} ({type(e).__name__}); give (T,4,4) in .npy/.npz or text"
            ) from None
        P = np.asarray(a, dtype=np.float64)
    else:
        rows = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                v = [float(x) for x in line.replace(",", " ").split()]
            except ValueError:
                raise PriorlabError(
                    f"{str(p)!r} line {i}: not numbers; expect 12 or 16 numbers per line"
                ) from None
            if len(v) in (13, 17):
                v = v[1:]
            if len(v) not in (12, 16):
                raise PriorlabError(
                    f"{str(p)!r} line {i} has {len(v)} numbers; expect 12 (3x4) or 16 (4x4), "
                    "optionally after a frame number"
                )
            rows.append(v)
        if not rows:
            raise PriorlabError(f"pose file {str(p)!r} has no poses")
        if len({len(r) for r in rows}) > 1:
            raise PriorlabError(f"pose file {str(p)!r} mixes 12- and 16-number lines; use one layout")
        P = np.asarray(rows).reshape(len(rows), -1, 4)
    if P.ndim != 3 or P.shape[1:] not in ((3, 4), (4, 4)):
        raise PriorlabError(f"poses in {str(p)!r} have shape {P.shape}; expected (T,4,4) or (T,3,4)")
    if P.shape[1] == 3:
        P = np.concatenate([P, np.tile([[[0, 0, 0, 1.0]]], (len(P), 1, 1))], 1)
    if n is not None and len(P) != n:
        raise PriorlabError(
            f"pose file {str(p)!r} has {len(P)} poses for {n} frames; give one per frame, in order"
        )
    return P


def _accumulate(args) -> int:
    from priorlab.sceneflow.trajectory import fit_mask, accumulate

    _check_fit_args(args)
    if len(args.frames) < 2:
        raise UsageError("accumulate needs at least two FRAME files")
    out = _out_path(args.out, ".npz")
    png = _out_path(args.png, ".png", "--png") if args.png else None
    clouds = [_load_cloud(f, f"frame {k}", args.drop_invalid) for k, f in enumerate(args.frames)]
    poses = read_poses(args.poses, len(clouds)) if args.poses else None
    if args.method == "none" and poses is None:
        raise UsageError("--method none aligns with poses only; give --poses FILE or pick a flow method")
    t0 = time.perf_counter()
    results: list = []
    rigid = None
    fields = None
    notes = []
    if args.method != "none":
        remove_ground = args.remove_ground
        if args.remove_ground:
            ground = [~fit_mask(c, None, True, 0.3) for c in clouds]
            if poses is not None:
                rigid = ground  # static by definition: poses alone align it
                notes.append(f"{sum(int(g.sum()) for g in ground)} ground points aligned with the poses only")
            else:
                dropped = sum(int(g.sum()) for g in ground)
                clouds = [c[~g] for c, g in zip(clouds, ground)]
                remove_ground = False  # already removed
                notes.append(
                    f"dropped {dropped} ground points: without --poses the ground cannot be aligned "
                    "(the flow is fitted on non-ground points)"
                )
        fields = _estimator(args, results, remove_ground=remove_ground)
    cloud = accumulate(clouds, fields, poses=poses, rigid=rigid, progress=not args.quiet)
    dt = time.perf_counter() - t0
    np.savez_compressed(out, points=cloud[:, :3].astype(np.float32), frame=cloud[:, 3].astype(np.int32))
    how = (
        "poses only"
        if fields is None
        else f"{'poses + ' if poses is not None else ''}{args.method} flow (backward, chained)"
    )
    print(f"accumulated {len(clouds)} frames, {len(cloud)} points, aligned with {how} in {dt:.1f} s")
    for n in notes:
        print(n)
    if results:
        print("flow iterations per pair: " + ", ".join(str(r.iterations) for r in results))
    print(f"wrote {out}")
    if png is not None:
        from priorlab.sceneflow.viz import plot_accumulated

        panels, titles = [cloud], [f"aligned with {how}"]
        if fields is not None and poses is not None:
            panels.insert(0, accumulate(clouds, None, poses=poses, progress=False))
            titles.insert(0, "poses only (moving objects smear)")
        masks, what = None, ""
        if rigid is not None:  # ground known: draw the rest, whose alignment the flow changed
            masks, what = ~np.concatenate(rigid), ", non-ground points"
        plot_accumulated(
            panels,
            png,
            titles=titles,
            masks=masks,
            range_m=args.png_range,
            title=f"{len(clouds)} sweeps in frame 0 coordinates{what}",
        )
        print(f"wrote {png}")
    return 0


def _demo(args) -> int:
    from priorlab.sceneflow.metrics import scene_flow_metrics, threeway_epe
    from priorlab.sceneflow.synthetic import synthetic_sequence
    from priorlab.sceneflow.trajectory import (
        accumulate,
        integrate_trajectories,
        to_reference,
        trajectory_endpoint_error,
    )
    from priorlab.sceneflow.viz import plot_accumulated, plot_error_map, plot_flow_bev, plot_trajectories

    _check_fit_args(args)
    if args.frames < 2:
        raise UsageError(f"--frames must be >= 2, got {args.frames}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    _writable_folder(out, "--out")
    t_start = time.perf_counter()
    seq = synthetic_sequence(
        args.frames, seed=args.seed, n_beams=args.beams, azimuth_resolution=args.azimuth_res
    )
    pair = seq.pair(0)
    print(
        f"synthetic scene (seed {args.seed}): {args.frames} frames, {len(pair['pc0'])} / "
        f"{len(pair['pc1'])} points in the first pair, "
        f"{int(pair['dynamic'].sum())} dynamic"
    )
    results: list = []
    args.remove_ground = (
        True  # NSFP protocol: fit on non-ground points (the field is still evaluated everywhere)
    )
    est = _estimator(args, results)
    traj, fields = integrate_trajectories(seq, est, return_fields=True, progress=not args.quiet)
    pred = fields[0](pair["pc0"])
    r0 = results[0]
    print(
        f"pair 0->1, {args.method}: {r0.iterations} iterations in {r0.time_s:.1f} s, final loss "
        f"{r0.final_loss:.5g}"
    )
    m = pair["eval_mask"]
    metrics = {k: float(v) for k, v in scene_flow_metrics(pred, pair["flow"], m).items()}
    metrics.update(
        {
            k: float(v)
            for k, v in threeway_epe(pred, pair["flow"], pair["classes"], pair["dynamic"], m).items()
        }
    )
    metrics["n_points"] = int(m.sum())
    print("metrics on the first pair (non-ground points within 50 m):")
    _print_metrics(metrics, indent="  ")

    f0 = seq.frames[0]
    sel = ~f0.is_ground & (np.abs(f0.points[:, :2]) <= 50).all(1)
    long = {
        "all": trajectory_endpoint_error(traj, seq.trajectories, sel).tolist(),
        "dynamic": trajectory_endpoint_error(traj, seq.trajectories, sel & f0.dynamic).tolist(),
        "static": trajectory_endpoint_error(traj, seq.trajectories, sel & ~f0.dynamic).tolist(),
    }
    print("trajectory endpoint error (m) after k frames, non-ground points within 50 m:")
    print("  k        " + " ".join(f"{k:>7d}" for k in range(1, args.frames)))
    for name, v in long.items():
        print(f"  {name:<8} " + " ".join(f"{x:7.3f}" for x in v[1:]))

    # non-ground points only: the fields were fitted without the ground (NSFP protocol)
    ng = [f.points[~f.is_ground] for f in seq]
    cloud = accumulate(ng, fields, progress=False)  # forward fields inverted, chained down to frame 0
    rigid = accumulate(ng, None, poses=seq.poses, progress=False)

    pngs = [
        plot_flow_bev(
            pair["pc0"],
            pred,
            out / "flow_bev.png",
            ego_motion=pair["ego_motion"],
            mask=~pair["is_ground0"],
            title=f"estimated flow ({args.method}) on non-ground points, synthetic pair, seed {args.seed}",
        ),
        plot_flow_bev(
            pair["pc0"],
            pair["flow"],
            out / "flow_gt.png",
            ego_motion=pair["ego_motion"],
            mask=~pair["is_ground0"],
            title="ground-truth flow, synthetic pair",
        ),
        plot_error_map(
            pair["pc0"],
            pred,
            pair["flow"],
            out / "error_map.png",
            mask=m,
            title=f"end-point error of {args.method} (EPE3D {metrics['EPE3D']:.3f} m)",
        ),
        plot_trajectories(
            to_reference(traj, seq.poses),
            out / "trajectories.png",
            true_traj=to_reference(seq.trajectories, seq.poses),
            background=f0.points[~f0.is_ground],
            title=f"{args.frames}-frame trajectories of frame 0's points ({args.method}), "
            "frame 0 coordinates",
        ),
        plot_accumulated(
            [rigid, cloud],
            out / "accumulated.png",
            titles=["true poses only (moving objects smear)", f"{args.method} flow, no poses"],
            title=f"{args.frames} synthetic sweeps accumulated into frame 0 (non-ground points)",
        ),
    ]
    report = {
        "seed": args.seed,
        "method": args.method,
        "points": args.points,
        "max_iters": args.max_iters,
        "frames": args.frames,
        "pair_metrics": metrics,
        "trajectory_endpoint_error": long,
        "iterations": [int(r.iterations) for r in results],
        "time_s": round(time.perf_counter() - t_start, 2),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    for p in pngs:
        print(f"wrote {p}")
    print(f"wrote {out / 'metrics.json'}  ({report['time_s']:.0f} s in all)")
    return 0


# --------------------------------------------------------------------------------------------
# standalone entry point
# --------------------------------------------------------------------------------------------
