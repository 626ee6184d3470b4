"""``priorlab flow ...``: scene flow from the command line.

Subcommands: ``estimate``, ``eval``, ``demo``, ``accumulate`` (``priorlab flow CMD --help``).
The top-level CLI calls :func:`add_flow_subparser` and :func:`run_flow`; standalone use:
``python -m priorlab.sceneflow.cli flow demo``.

Bad input raises :class:`~priorlab.errors.PriorlabError` (:class:`~priorlab.errors.UsageError` for a
wrong option); the top-level ``priorlab`` command prints it as one ``error: ...`` line and exits 1
(data) or 2 (usage). Output paths are checked for writability before any fit. Clouds are loaded in
float64 and the fit centres them, so map / UTM coordinates work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError, UsageError

METHODS = ("nsfp", "fast", "free")

_FIT_NOTE = (
    "The flow is fitted on the filtered clouds (--max-range crop, --remove-ground, --points subsample) "
    "but evaluated at EVERY point of PC1 as given (NSFP / Fast-NSF query their neural field there; "
    "'free' interpolates from the nearest fitted points), so FLOW.npz always has one row per PC1 point."
)


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _add_fit_options(p, *, points=8192, max_iters=None, method="nsfp", methods=METHODS):
    p.add_argument(
        "--method",
        default=method,
        choices=methods,
        help=f"nsfp = Neural Scene Flow Prior (Li et al. 2021), fast = Fast Neural Scene Flow "
        f"(Li et al. 2023, distance-transform loss), free = per-point free variables (default {method})",
    )
    p.add_argument(
        "--points",
        type=int,
        default=points,
        metavar="N",
        help=f"fit on a random subsample of N points per cloud; 0 = all points, slow on CPU for "
        f"full sweeps (default {points})",
    )
    p.add_argument(
        "--max-iters",
        type=int,
        default=max_iters,
        metavar="K",
        help="optimisation steps per pair (default: the method's own"
        + ("" if max_iters is None else f"; here {max_iters}")
        + ")",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--max-range",
        type=float,
        default=None,
        metavar="R",
        help="fit only on points within R m of the sensor (3-D distance)",
    )
    p.add_argument("--remove-ground", action="store_true", help="fit only on non-ground points (plane fit)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch CPU threads for the fit (default: torch's choice; 1 is faster on a busy machine)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_drop_invalid(p):
    p.add_argument(
        "--drop-invalid",
        action="store_true",
        help="drop points with NaN/inf coordinates when loading (default: refuse such files)",
    )


def add_flow_subparser(subparsers) -> argparse.ArgumentParser:
    """Add the ``flow`` command (with its subcommands) to an argparse subparsers object."""
    flow = subparsers.add_parser(
        "flow",
        help="scene flow for lidar point clouds (NSFP, Fast-NSF): estimate, eval, demo, accumulate",
        description="Scene flow between lidar sweeps with a neural scene-flow prior, optimised at run time "
        "(no training data). Flow convention: pc1 + flow = where each point is in the second sweep, "
        "in the second sweep's coordinates (includes ego motion, as in Argoverse 2).",
    )
    sub = flow.add_subparsers(dest="flow_command", metavar="{estimate,eval,demo,accumulate}", required=True)

    p = sub.add_parser(
        "estimate",
        help="estimate flow from PC1 to PC2",
        description="Estimate scene flow from PC1 to PC2. "
        + _FIT_NOTE
        + " Ctrl-C stops early, still writes the best flow so far and exits with code 130.",
    )
    p.add_argument("pc1", help="first cloud (.npy/.npz/.bin KITTI/.pcd/.ply/.feather/.las/.laz)")
    p.add_argument("pc2", help="second cloud")
    p.add_argument(
        "--out",
        required=True,
        metavar="FLOW.npz",
        help="output .npz with key 'flow' (N,3), one row per PC1 point",
    )
    _add_fit_options(p)
    _add_drop_invalid(p)

    p = sub.add_parser(
        "eval",
        help="compare a flow file with ground truth",
        description="Compare FLOW.npz (key 'flow') with GT.npz (key 'flow'; optional 'eval_mask' or 'mask', "
        "'classes' and 'dynamic' for the three-way EPE, as in the Argoverse 2 pair files).",
    )
    p.add_argument("flow", metavar="FLOW.npz")
    p.add_argument("gt", metavar="GT.npz")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")

    p = sub.add_parser(
        "demo",
        help="synthetic lidar scene end to end: estimate, evaluate, plot",
        description="Generate a synthetic lidar sequence (exact ground truth), estimate flow for each "
        "consecutive pair, evaluate the first pair, integrate trajectories over the sequence, "
        "accumulate the sweeps, and write PNGs. Defaults (a 4-frame sequence, 2048 fitted points "
        "per cloud, capped iterations) keep it to about a minute on 2 CPU cores. The ground is "
        "always removed "
        "for fitting (the NSFP protocol); the fitted field is evaluated at every point.",
    )
    p.add_argument(
        "--out", default="runs/flow-demo", metavar="DIR", help="output folder (default runs/flow-demo)"
    )
    p.add_argument(
        "--frames", type=int, default=4, help="sequence length for trajectories / accumulation (default 4)"
    )
    p.add_argument("--beams", type=int, default=32, help="synthetic lidar beams (default 32)")
    p.add_argument(
        "--azimuth-res",
        type=float,
        default=0.35,
        metavar="DEG",
        help="synthetic lidar azimuth resolution in degrees (default 0.35, ~1000 rays per beam)",
    )
    _add_fit_options(p, points=2048, max_iters=150)

    p = sub.add_parser(
        "accumulate",
        help="align several sweeps into the first one's coordinates",
        description="Bring every FRAME into the first frame's coordinates and write one dense cloud: "
        "ego motion removed with --poses (if given), then moving objects aligned with scene flow "
        "estimated backwards (frame k -> k-1) and chained down to frame 0. --method none uses the "
        "poses only. Flow is fitted on the filtered clouds (--max-range, --remove-ground, --points) but "
        "applied to every point. With --remove-ground the ground is static by definition: it is "
        "aligned with the poses alone, or, without --poses, dropped from the output (a field fitted "
        "without the ground extrapolates poorly onto it).",
    )
    p.add_argument("frames", nargs="+", metavar="FRAME", help="two or more clouds, in time order")
    p.add_argument(
        "--out", required=True, metavar="CLOUD.npz", help="output .npz with 'points' (M,3) and 'frame' (M,)"
    )
    p.add_argument(
        "--poses",
        metavar="FILE",
        help="one pose per frame, frame->world or frame->first frame: text with 12 (3x4) or 16 (4x4) "
        "row-major numbers per line, optionally preceded by the frame number ('#' comments allowed), "
        "or .npy/.npz (T,4,4). Poses must be of the lidar frame: KITTI odometry poses.txt has the "
        "right layout but gives camera poses; convert them with the calibration Tr first",
    )
    p.add_argument(
        "--png", metavar="PATH", help="also draw the accumulated cloud (bird's-eye view) to this PNG"
    )
    p.add_argument(
        "--png-range",
        type=float,
        default=40.0,
        metavar="M",
        help="half-width of the PNG view in m (default 40)",
    )
    _add_fit_options(p, method="nsfp", methods=METHODS + ("none",))
    _add_drop_invalid(p)

    flow.set_defaults(func=run_flow)
    return flow


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def run_flow(args) -> int:
    """Run a parsed ``flow`` command; returns the exit code. Bad input raises PriorlabError (the
    top-level CLI prints it as one line)."""
    from priorlab.progress import set_quiet

    if getattr(args, "quiet", False):
        set_quiet(True)
    cmd = getattr(args, "flow_command", None)
    handlers = {"estimate": _estimate, "eval": _eval, "demo": _demo, "accumulate": _accumulate}
    if cmd not in handlers:
        raise UsageError(
            "missing subcommand: use 'flow estimate', 'flow eval', 'flow demo' or 'flow accumulate'"
        )
    try:
        return int(handlers[cmd](args) or 0)
    except KeyboardInterrupt:
        print("interrupted: stopped before anything was written", file=sys.stderr)
        return 130


def _check_fit_args(args):
    if args.points is not None and (args.points < 0 or args.points == 1):
        raise UsageError(f"--points must be >= 2 (or 0 for all points), got {args.points}")
    if args.points == 0:
        args.points = None
    if args.max_iters is not None and args.max_iters < 1:
        raise UsageError(f"--max-iters must be >= 1, got {args.max_iters}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.max_range is not None and not args.max_range > 0:
        raise UsageError(f"--max-range must be > 0 m, got {args.max_range}")


def _writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and prove a file can be written there, before any long computation."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".priorlab-write-check-"):
            pass
    except OSError as e:
        raise PriorlabError(
            f"{what}: cannot write into {str(folder)!r} ({e.strerror or e}); choose a writable location"
        ) from None


def _out_path(path, suffix, option="--out") -> Path:
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise UsageError(f"{option} {str(p)!r} must end in {suffix}")
    if p.is_dir():
        raise UsageError(f"{option} {str(p)!r} is a folder; give a file name ending in {suffix}")
    _writable_folder(p.parent, option)
    if p.exists() and not os.access(p, os.W_OK):
        raise PriorlabError(f"{option}: {str(p)!r} exists and is not writable; choose another file name")
    return p


def _load_cloud(path, what, drop_invalid=False) -> np.ndarray:
    """float64 xyz (the fit centres it, so map / UTM coordinates keep their precision)."""
    from priorlab.sceneflow.io import _load_points

    p = Path(path)
    if not p.exists():
        raise PriorlabError(f"{what} file not found: {str(p)!r}")
    return _load_points(
        p,
        columns=3,
        bin_columns=None,
        key=None,
        drop_invalid=drop_invalid,
        dtype=np.float64,
        nan_hint="add --drop-invalid to drop them",
    )


def _estimator(args, results):
    from priorlab.sceneflow.trajectory import make_estimator

    return _stop_on_interrupt(
        make_estimator(
            args.method,
            points=args.points,
            seed=args.seed,
            max_iters=args.max_iters,
            max_range=args.max_range,
            remove_ground=args.remove_ground,
            progress=not args.quiet,
            device=args.device,
            results=results,
            **_thread_opt(args),
        ),
        results,
    )


def _stop_on_interrupt(estimator, results):
    """Ctrl-C stops one pair's fit inside estimate_flow; for multi-pair commands, end the run there."""

    def wrapped(a, b):
        field = estimator(a, b)
        if results and results[-1].interrupted:
            raise KeyboardInterrupt
        return field

    return wrapped


def _thread_opt(args) -> dict:
    return {} if args.threads is None else {"num_threads": args.threads}


def _estimate(args) -> int:
    from priorlab.sceneflow.io import save_flow
    from priorlab.sceneflow.trajectory import fit_mask, field_from_result
    from priorlab.sceneflow.estimate import estimate_flow

    _check_fit_args(args)
    out = _out_path(args.out, ".npz")
    pc1 = _load_cloud(args.pc1, "PC1", args.drop_invalid)
    pc2 = _load_cloud(args.pc2, "PC2", args.drop_invalid)
    m1 = fit_mask(pc1, args.max_range, args.remove_ground, 0.3)
    m2 = fit_mask(pc2, args.max_range, args.remove_ground, 0.3)
    for m, name in ((m1, "PC1"), (m2, "PC2")):
        if m.sum() < 3:
            raise PriorlabError(
                f"only {int(m.sum())} {name} points left after --max-range/--remove-ground; loosen them"
            )
    res = estimate_flow(
        pc1[m1],
        pc2[m2],
        method=args.method,
        points=args.points,
        seed=args.seed,
        max_iters=args.max_iters,
        progress=not args.quiet,
        device=args.device,
        **_thread_opt(args),
    )
    if m1.all():
        flow = np.asarray(res.flow, dtype=np.float32)
    else:
        flow = field_from_result(res, pc1[m1])(pc1)
    save_flow(
        out,
        flow,
        method=args.method,
        iterations=int(res.iterations),
        time_s=float(res.time_s),
        final_loss=float(res.final_loss),
        interrupted=bool(res.interrupted),
        fit_mask=m1,
    )
    n_fit = int(m1.sum()) if args.points is None else min(int(m1.sum()), args.points)
    print(
        f"method {args.method}: {res.iterations} iterations in {res.time_s:.1f} s, final loss "
        f"{res.final_loss:.5g}"
    )
    print(f"fitted on {n_fit} of {len(pc1)} PC1 points; flow written for all {len(pc1)} points")
    mag = np.linalg.norm(flow, axis=1)
    print(f"|flow|: mean {mag.mean():.3f} m, max {mag.max():.3f} m")
    if res.interrupted:
        print(f"interrupted: wrote the best flow so far to {out}")
        return 130
    print(f"wrote {out}")
    return 0


def _npz(path, what) -> dict:
    p = Path(path)
    if not p.exists():
        raise PriorlabError(f"{what} file not found: {str(p)!r}")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - corrupt / not an npz
        raise PriorlabError(
            f"cannot read {what} {str(p)!r} as .npz ({type(e).__name__}); give a numpy .npz file"
        ) from None


def _flow_array(d, path, what, n=None) -> np.ndarray:
    if "flow" not in d:
        raise PriorlabError(
            f"{what} {str(path)!r} has no 'flow' array (keys: {', '.join(sorted(d)) or 'none'})"
        )
    f = np.asarray(d["flow"], dtype=np.float32)
    if f.ndim != 2 or f.shape[1] != 3:
        raise PriorlabError(f"'flow' in {str(path)!r} has shape {f.shape}; expected (N,3)")
    if n is not None and len(f) != n:
        raise PriorlabError(
            f"{what} {str(path)!r} has {len(f)} flow rows but the prediction has {n}; they must be "
            "for the same PC1"
        )
    return f


def _eval(args) -> int:
    from priorlab.sceneflow.metrics import scene_flow_metrics, threeway_epe

    pd, gd = _npz(args.flow, "flow"), _npz(args.gt, "ground truth")
    pred = _flow_array(pd, args.flow, "flow file")
    gt = _flow_array(gd, args.gt, "ground truth", len(pred))
    n = len(pred)
    mask = None
    for key in ("eval_mask", "mask"):
        if key in gd:
            mask = np.asarray(gd[key]).astype(bool).reshape(-1)
            if len(mask) != n:
                raise PriorlabError(
                    f"'{key}' in {args.gt!r} has {len(mask)} entries for {n} points; it must have "
                    "one per point"
                )
            break
    valid = np.isfinite(gt).all(1) if mask is None else mask & np.isfinite(gt).all(1)
    bad = int((~np.isfinite(pred).all(1) & valid).sum())
    if bad:
        raise PriorlabError(
            f"the flow file has {bad} NaN/inf rows among the evaluated points; re-run the estimate"
        )
    if not valid.any():
        raise PriorlabError("no point to evaluate: the mask selects none (or the ground truth is all NaN)")
    res = {k: float(v) for k, v in scene_flow_metrics(pred, gt, valid).items()}
    res["n_points"] = int(valid.sum())
    if "classes" in gd and "dynamic" in gd:
        cl, dy = np.asarray(gd["classes"]).reshape(-1), np.asarray(gd["dynamic"]).astype(bool).reshape(-1)
        if len(cl) != n or len(dy) != n:
            raise PriorlabError(
                f"'classes'/'dynamic' in {args.gt!r} have {len(cl)}/{len(dy)} entries for {n} "
                "points; need one per point"
            )
        res.update({k: float(v) for k, v in threeway_epe(pred, gt, cl, dy, valid).items()})
    if args.json:
        print(
            json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in res.items()})
        )
    else:
        _print_metrics(res)
    return 0


def _print_metrics(res: dict, indent: str = "") -> None:
    units = {"EPE3D": "m", "angle_error": "rad"}
    for k, v in res.items():
        if k in ("Acc5", "Acc10", "Outliers"):
            print(f"{indent}{k:<12} {100 * v:7.2f} %")
        elif k == "n_points":
            print(f"{indent}{'points':<12} {v:7d}")
        elif isinstance(v, float) and math.isnan(v):
            print(f"{indent}{k:<12}     n/a (no such points)")
        else:
            print(f"{indent}{k:<12} {v:7.4f} {units.get(k, 'm' if k.startswith('EPE') else '')}")


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
    from priorlab.sceneflow.trajectory import fit_mask, accumulate, make_estimator

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
        fields = _stop_on_interrupt(
            make_estimator(
                args.method,
                points=args.points,
                seed=args.seed,
                max_iters=args.max_iters,
                max_range=args.max_range,
                remove_ground=remove_ground,
                progress=not args.quiet,
                device=args.device,
                results=results,
                **_thread_opt(args),
            ),
            results,
        )
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


def main(argv=None) -> int:
    """``python -m priorlab.sceneflow.cli flow ...``: the ``priorlab`` command (same errors, exit codes)."""
    from priorlab.cli import main as priorlab_main

    return priorlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())
