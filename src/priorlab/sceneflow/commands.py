"""The ``flow estimate`` and ``flow eval`` commands, and the checks and loaders they share with
the sequence commands (:mod:`priorlab.sceneflow.commands_sequences`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError, UsageError


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
    if args.method == "rigid":
        if args.max_range is not None:
            raise UsageError("--max-range applies to the optimised methods; 'rigid' uses the whole sweep")
        # rigid uses every point and removes the ground itself; the fit options do not apply
        args.points, args.max_iters, args.remove_ground = None, None, False
    elif getattr(args, "ego_motion", None) is not None:
        raise UsageError("--ego-motion is an input of --method rigid only (the other methods' flow "
                         "includes the ego motion they find)")


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


def _estimator(args, results, remove_ground=None):
    """The CLI's pair estimator; ``remove_ground`` overrides ``--remove-ground`` (None keeps it)."""
    from priorlab.sceneflow.trajectory import make_estimator

    return _stop_on_interrupt(
        make_estimator(
            args.method,
            points=args.points,
            seed=args.seed,
            max_iters=args.max_iters,
            max_range=args.max_range,
            remove_ground=args.remove_ground if remove_ground is None else remove_ground,
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


def _read_pose(path) -> np.ndarray:
    """A 4x4 pose from a .npy file or a text file (16 numbers, or 12 as a KITTI 3x4 row); checked
    as a rigid transform by :func:`~priorlab.sceneflow.preprocess._as_pose`."""
    from priorlab.sceneflow.preprocess import _as_pose

    p = Path(path)
    if not p.is_file():
        raise PriorlabError(f"pose file not found: {str(p)!r}")
    try:
        values = np.asarray(np.load(p) if p.suffix == ".npy" else np.loadtxt(p), dtype=np.float64)
    except ValueError as err:
        raise PriorlabError(f"{p.name}: not a pose ({err})") from None
    if values.size not in (12, 16):
        raise PriorlabError(f"{p.name}: expected a 4x4 (or KITTI 3x4) pose, got {values.size} values")
    return _as_pose(values.reshape(-1, 4), p.name)


def _estimate(args) -> int:
    from priorlab.sceneflow.io import save_flow
    from priorlab.sceneflow.trajectory import fit_mask, field_from_result
    from priorlab.sceneflow.estimate import estimate_flow

    _check_fit_args(args)
    out = _out_path(args.out, ".npz")
    rrd = _out_path(args.rrd, ".rrd", "--rrd") if args.rrd else None
    if args.gt is not None and rrd is None:
        raise UsageError("--gt only feeds the --rrd recording; add --rrd FILE (or use 'flow eval')")
    pc1 = _load_cloud(args.pc1, "PC1", args.drop_invalid)
    pc2 = _load_cloud(args.pc2, "PC2", args.drop_invalid)
    m1 = fit_mask(pc1, args.max_range, args.remove_ground, 0.3)
    m2 = fit_mask(pc2, args.max_range, args.remove_ground, 0.3)
    for m, name in ((m1, "PC1"), (m2, "PC2")):
        if m.sum() < 3:
            raise PriorlabError(
                f"only {int(m.sum())} {name} points left after --max-range/--remove-ground; loosen them"
            )
    if args.method == "rigid":
        extra = {} if args.ego_motion is None else {"ego_motion": _read_pose(args.ego_motion)}
        res = estimate_flow(pc1, pc2, method="rigid", seed=args.seed, **extra)
    else:
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
    if args.method == "rigid":
        info = res.info
        print(f"method rigid: {info['dynamic_clusters']} moving of {info['clusters']} clusters, ego motion "
              f"{'estimated' if info['ego_estimated'] else 'given'}, {res.time_s:.1f} s")
    else:
        print(
            f"method {args.method}: {res.iterations} iterations in {res.time_s:.1f} s, final loss "
            f"{res.final_loss:.5g}"
        )
        print(f"fitted on {n_fit} of {len(pc1)} PC1 points; flow written for all {len(pc1)} points")
    mag = np.linalg.norm(flow, axis=1)
    print(f"|flow|: mean {mag.mean():.3f} m, max {mag.max():.3f} m")
    if rrd is not None:
        from priorlab.sceneflow.rerun_view import write_pair_rrd

        gt = _npz(args.gt, "ground truth") if args.gt else {}
        if gt:
            _flow_array(gt, args.gt, "ground truth", len(flow))
        write_pair_rrd(rrd, pc1, pc2, flow, gt=gt.get("flow"), eval_mask=gt.get("eval_mask"),
                       labels=res.info.get("labels"), ego_motion=res.info.get("ego_motion"))
        print(f"wrote {rrd} (open it with: rerun {rrd})")
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
