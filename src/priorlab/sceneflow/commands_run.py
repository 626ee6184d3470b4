"""``priorlab flow run`` (flow for every consecutive pair of a sequence) and ``flow eval`` over a
folder of such outputs.

Run: frames and poses come from :func:`priorlab.sceneflow.sequence.discover_sequence`; pair
k -> k+1 gets one file named after frame k (``<name>.npz`` by :func:`io.save_flow`, or the AV2
2024 challenge layout with ``--format av2-2024``). Each file is written to a temp name and
renamed when complete, so a killed run loses no finished frame and a rerun skips every frame whose
file exists. ``.priorlab-run.json`` in the output folder records the settings; a rerun with other
settings stops instead of mixing two methods' frames. Workers (``--jobs``, ``--executor ray``)
only compute; this process writes every file, as in :mod:`priorlab.harness.executors`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError, UsageError

FORMATS = ("npz", "av2-2024")
EXECUTORS = ("local", "ray")
STATE_FILE = ".priorlab-run.json"
MIN_POINTS_OPTIMISED = 3  # a Chamfer fit needs a few points per cloud; rigid needs its min_points


@dataclass(frozen=True)
class PairTask:
    """One pair to estimate: everything a worker process needs (picklable)."""

    k: int
    frame1: str
    frame2: str
    ego_motion: np.ndarray | None
    opts: dict


def _min_points(method: str) -> int:
    from priorlab.sceneflow.rigid import RIGID_DEFAULTS

    return int(RIGID_DEFAULTS["min_points"]) if method == "rigid" else MIN_POINTS_OPTIMISED


def compute_pair(task: PairTask, threads: int | None = 1) -> dict:
    """Estimate one pair; returns the flow and what the output file stores. Raises
    PriorlabError (naming the frame) for a corrupt frame or one with too few points, and
    KeyboardInterrupt when the fit was stopped (an interrupted fit is never saved as finished)."""
    from priorlab.sceneflow.commands import _load_cloud
    from priorlab.sceneflow.estimate import estimate_flow
    from priorlab.sceneflow.trajectory import field_from_result, fit_mask

    o = task.opts
    pcs = [_load_cloud(f, f"frame {Path(f).name}", o["drop_invalid"]) for f in (task.frame1, task.frame2)]
    need = _min_points(o["method"])
    masks = [fit_mask(pc, o["max_range"], o["remove_ground"], 0.3) for pc in pcs]
    for f, m in zip((task.frame1, task.frame2), masks):
        if int(m.sum()) < need:
            raise PriorlabError(f"frame {Path(f).name}: {int(m.sum())} usable points, method "
                                f"{o['method']} needs at least {need}")
    extra = {} if threads is None else {"num_threads": threads}
    if o["method"] == "rigid":  # whole sweeps: it removes the ground itself
        ego = {} if task.ego_motion is None else {"ego_motion": task.ego_motion}
        res = estimate_flow(pcs[0], pcs[1], method="rigid", seed=o["seed"], **ego)
        flow = np.asarray(res.flow, np.float32)
    else:
        res = estimate_flow(pcs[0][masks[0]], pcs[1][masks[1]], method=o["method"], points=o["points"],
                            seed=o["seed"], max_iters=o["max_iters"], progress=False,
                            device=o["device"], **extra)
        flow = (np.asarray(res.flow, np.float32) if masks[0].all()
                else field_from_result(res, pcs[0][masks[0]])(pcs[0]))
    if res.interrupted:
        raise KeyboardInterrupt
    out = {"k": task.k, "flow": flow, "time_s": float(res.time_s), "iterations": int(res.iterations),
           "final_loss": float(res.final_loss), "n_points": len(pcs[0])}
    info = res.info or {}
    if "labels" in info:
        out["labels"] = np.asarray(info["labels"], np.int32)
        out["dynamic_clusters"] = int(info.get("dynamic_clusters", 0))
    if info.get("ego_motion") is not None:
        out["ego_motion"] = np.asarray(info["ego_motion"], np.float64)
    return out


def _compute_single_threaded(task: PairTask) -> dict:
    """A pool/Ray worker: one torch thread per pair (parallelism comes from the pairs)."""
    import torch

    from priorlab.progress import set_quiet

    torch.set_num_threads(1)
    set_quiet(True)
    return compute_pair(task, threads=1)


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------


def _settings(args, seq) -> dict:
    return {"sequence": str(Path(args.seq).resolve()), "format": args.format, "method": args.method,
            "points": args.points, "max_iters": args.max_iters, "seed": args.seed,
            "max_range": args.max_range, "remove_ground": bool(args.remove_ground),
            "poses": seq.pose_source or None}


def _check_state(out: Path, settings: dict) -> None:
    state = out / STATE_FILE
    if state.exists():
        try:
            old = json.loads(state.read_text())
        except ValueError:
            old = {}
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise PriorlabError(
                f"{out} holds a run with other settings "
                f"({', '.join(f'{k}={old.get(k)!r} (now {settings[k]!r})' for k in diff)}); "
                "use another --out, or delete that folder to start over")
    tmp = state.with_name(state.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, state)


def _target(args, seq, out: Path, k: int) -> Path:
    if args.format == "av2-2024":
        from priorlab.sceneflow.av2_submission import frame_file

        return frame_file(out, seq.log_id, k)
    return out / f"{seq.names[k]}.npz"


def _write(args, seq, path: Path, r: dict) -> None:
    from priorlab.sceneflow.io import save_flow

    if args.format == "av2-2024":
        from priorlab.sceneflow.av2_submission import write_av2_frame

        write_av2_frame(path, r["flow"])
        return
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    extra = {k: r[k] for k in ("labels", "ego_motion") if k in r}
    try:
        save_flow(tmp, r["flow"], method=args.method, time_s=r["time_s"], iterations=r["iterations"],
                  final_loss=r["final_loss"], frame=seq.names[r["k"]], next_frame=seq.names[r["k"] + 1],
                  **extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(folder: Path) -> None:
    """Delete temp files of writers that were killed (``.<name>.tmp<pid>.<ext>``, pid gone)."""
    for f in folder.glob(".*.tmp*.*") if folder.is_dir() else []:
        pid = f.name.rsplit(".tmp", 1)[-1].split(".", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            f.unlink(missing_ok=True)


def _check_run_args(args) -> None:
    from priorlab.sceneflow.commands import _check_fit_args

    _check_fit_args(args)
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.gt is not None and args.rrd is None:
        raise UsageError("--gt only feeds the --rrd recording; add --rrd FILE (or use 'flow eval')")


def _run(args) -> int:
    from priorlab.progress import progress
    from priorlab.sceneflow.commands import _writable_folder
    from priorlab.sceneflow.sequence import discover_sequence

    _check_run_args(args)
    seq = discover_sequence(args.seq, poses=args.poses)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder")
    _writable_folder(out, "--out")
    if args.rrd is not None:
        from priorlab.sceneflow.commands import _out_path

        _out_path(args.rrd, ".rrd", "--rrd")
    pairs = list(range(len(seq) - 1))
    if args.format == "av2-2024":
        from priorlab.sceneflow.av2_submission import is_submitted, write_metadata

        pairs = [k for k in pairs if is_submitted(k)]
        write_metadata(out)
    skipped: list[str] = []
    for k in seq.gaps:
        msg = (f"a frame is missing between {seq.names[k]} and {seq.names[k + 1]} (the pair would span "
               "two sweep intervals)")
        if not args.skip_bad:
            raise PriorlabError(msg + "; restore it, or pass --skip-bad to skip that pair")
        if k in pairs:
            pairs.remove(k)
            skipped.append(msg)
    _check_state(out, _settings(args, seq))
    _remove_stale_temps(out / seq.log_id if args.format == "av2-2024" else out)
    todo = [k for k in pairs if not _target(args, seq, out, k).exists()]
    poses = "with poses" if seq.poses is not None else "no poses"
    print(f"{seq.kind} sequence {seq.log_id}: {len(seq)} frames, {poses}; {len(pairs)} pairs to "
          f"output, {len(pairs) - len(todo)} already done (skipped), {len(todo)} to estimate")
    opts = {"method": args.method, "points": args.points, "max_iters": args.max_iters,
            "seed": args.seed, "max_range": args.max_range, "remove_ground": bool(args.remove_ground),
            "device": args.device, "drop_invalid": bool(args.drop_invalid)}
    use_poses = args.method == "rigid"  # the other methods' flow includes the ego motion they find
    tasks = [PairTask(k, str(seq.frames[k]), str(seq.frames[k + 1]),
                      seq.ego_motion(k) if use_poses else None, opts) for k in todo]
    start = time.perf_counter()
    done: list[dict] = []
    bar = progress(total=len(tasks), desc="flow run")

    def finished(task: PairTask, result: dict | None, error: Exception | None) -> None:
        if error is not None:
            if not (args.skip_bad and isinstance(error, PriorlabError)):
                raise error
            skipped.append(f"pair {seq.names[task.k]} -> {seq.names[task.k + 1]}: {error}")
            print(f"skipped {skipped[-1]}", file=sys.stderr)
        else:
            _write(args, seq, _target(args, seq, out, task.k), result)
            done.append({k: v for k, v in result.items() if not isinstance(v, np.ndarray)})
            bar.set_postfix_str(seq.names[task.k])
        bar.update()

    try:
        _dispatch(tasks, args, finished)
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted: {len(done)} frame(s) finished this run and kept; run the same command "
              "again to resume", file=sys.stderr)
        return 130
    finally:
        bar.close()
    wall = time.perf_counter() - start
    times = [d["time_s"] for d in sorted(done, key=lambda d: d["k"])]
    per = (", ".join(f"{seq.names[d['k']]} {d['time_s']:.1f} s" for d in sorted(done, key=lambda d: d["k"]))
           if len(done) <= 10 else f"{np.mean(times):.1f} s per pair, max {max(times):.1f} s" if done else "")
    print(f"estimated {len(done)} pair(s) with {args.method} in {wall:.1f} s" + (f" ({per})" if per else ""))
    if skipped:
        print(f"skipped {len(skipped)} pair(s) (--skip-bad): " + "; ".join(skipped))
    print(f"wrote {sum(_target(args, seq, out, k).exists() for k in pairs)} of {len(pairs)} outputs in {out}")
    if args.rrd is not None:
        _record_run(args, seq, out, pairs)
    return 0


def _dispatch(tasks: list[PairTask], args, finished) -> None:
    from priorlab.harness.executors import map_in_pool, map_on_ray

    if args.executor == "ray":
        map_on_ray(_compute_single_threaded, tasks, jobs=args.jobs, address=os.environ.get("RAY_ADDRESS"),
                   finished=finished)
    elif args.jobs <= 1:
        for task in tasks:
            try:
                result = compute_pair(task, threads=args.threads)
            except PriorlabError as e:
                finished(task, None, e)
            else:
                finished(task, result, None)
    else:
        map_in_pool(_compute_single_threaded, tasks, jobs=args.jobs, finished=finished)


def _record_run(args, seq, out: Path, pairs: list[int]) -> None:
    """The --rrd recording of every finished output (this run's and earlier ones)."""
    from priorlab.sceneflow.commands import _load_cloud
    from priorlab.sceneflow.rerun_view import FlowRecording
    from priorlab.sceneflow.sequence import read_flow_output, read_frame_gt

    rec = FlowRecording(args.rrd, name=seq.log_id)
    n = 0
    try:
        for k in pairs:
            path = _target(args, seq, out, k)
            if not path.exists():
                continue
            stored = read_flow_output(path)
            gt = read_frame_gt(args.gt, seq.names[k]) if args.gt else {}
            pc1 = _load_cloud(seq.frames[k], "frame", args.drop_invalid)
            pc2 = _load_cloud(seq.frames[k + 1], "frame", args.drop_invalid)
            ego = stored.get("ego_motion", seq.ego_motion(k))
            rec.add(k, pc1, pc2, stored["flow"], gt=gt.get("flow"), eval_mask=gt.get("eval_mask"),
                    labels=stored.get("labels"), ego_motion=ego, name=seq.names[k])
            n += 1
    except BaseException:
        rec.abort()
        raise
    print(f"wrote {rec.close()} ({n} frames; open it with: rerun {args.rrd})")


# --------------------------------------------------------------------------------------------
# eval over a folder of outputs
# --------------------------------------------------------------------------------------------


def frame_metrics(pred: np.ndarray, gt: dict, where: str) -> dict:
    """Metrics of one frame (as ``flow eval``): EPE3D, Acc5, Acc10, Outliers, angle error, and the
    three-way EPE when ``gt`` has ``classes`` and ``dynamic``."""
    from priorlab.sceneflow.commands import _flow_array
    from priorlab.sceneflow.metrics import scene_flow_metrics, threeway_epe

    g = _flow_array(gt, where, "ground truth", len(pred))
    n = len(pred)
    mask = next((np.asarray(gt[k]).astype(bool).reshape(-1) for k in ("eval_mask", "mask") if k in gt), None)
    if mask is not None and len(mask) != n:
        raise PriorlabError(f"{where}: the mask has {len(mask)} entries for {n} points")
    valid = np.isfinite(g).all(1) if mask is None else mask & np.isfinite(g).all(1)
    if not np.isfinite(pred[valid]).all():
        raise PriorlabError(f"{where}: the flow has NaN/inf rows among the evaluated points")
    if not valid.any():
        return {}
    res = {k: float(v) for k, v in scene_flow_metrics(pred, g, valid).items()}
    res["n_points"] = int(valid.sum())
    if "classes" in gt and "dynamic" in gt:
        cl, dy = np.asarray(gt["classes"]).reshape(-1), np.asarray(gt["dynamic"]).astype(bool).reshape(-1)
        if len(cl) == n and len(dy) == n:
            res.update({k: float(v) for k, v in threeway_epe(pred, g, cl, dy, valid).items()})
    return res


def _eval_sequence(args) -> int:
    """``flow eval DIR GT_DIR``: every ``<name>.npz`` in DIR against its ground truth in GT_DIR."""
    from priorlab.sceneflow.commands import _print_metrics
    from priorlab.sceneflow.io import load_flow
    from priorlab.sceneflow.sequence import read_frame_gt

    flow_dir, gt_dir = Path(args.flow), Path(args.gt)
    if not gt_dir.is_dir():
        raise PriorlabError(f"{str(gt_dir)!r} is not a folder; with a folder of flow files give a folder "
                            "of ground truth (<name>.npz, or AV2 <name>.feather annotations)")
    files = sorted(f for f in flow_dir.glob("*.npz") if not f.name.startswith("."))
    if not files:
        raise PriorlabError(f"{flow_dir}: no flow .npz files (AV2 challenge folders are scored by the "
                            "challenge's own evaluator)")
    per_frame, no_gt = {}, []
    for f in files:
        gt = read_frame_gt(gt_dir, f.stem)
        if not gt:
            no_gt.append(f.stem)
            continue
        m = frame_metrics(load_flow(f)["flow"].astype(np.float32), gt, str(f))
        if m:
            per_frame[f.stem] = m
    if not per_frame:
        raise PriorlabError(f"no frame of {flow_dir} has ground truth with evaluated points in {gt_dir} "
                            "(expected <name>.npz with the flow files' names)")
    keys = [k for k in next(iter(per_frame.values())) if k != "n_points"]
    mean = {k: float(np.nanmean([m.get(k, math.nan) for m in per_frame.values()])) for k in keys}
    mean["n_points"] = int(sum(m["n_points"] for m in per_frame.values()))
    if args.json:
        clean = {f: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
                 for f, m in {"mean": mean, **per_frame}.items()}
        print(json.dumps({"frames": len(per_frame), "without_gt": no_gt, "mean": clean.pop("mean"),
                          "per_frame": clean}))
        return 0
    print(f"{len(per_frame)} frame(s) evaluated" + (f", {len(no_gt)} without ground truth skipped: "
                                                     + ", ".join(no_gt) if no_gt else ""))
    print("  frame" + " " * 19 + "EPE3D (m)   Acc5 %  Acc10 %  points")
    for name, m in per_frame.items():
        print(f"  {name:<24} {m['EPE3D']:8.4f} {100 * m['Acc5']:8.2f} {100 * m['Acc10']:8.2f} "
              f"{m['n_points']:7d}")
    print("mean over frames (each frame weighs the same; points summed):")
    _print_metrics(mean, indent="  ")
    return 0
