"""``priorlab flow ...``: scene flow from the command line.

Subcommands: ``estimate``, ``run``, ``eval``, ``demo``, ``accumulate`` (``priorlab flow CMD --help``).
The top-level CLI calls :func:`add_flow_subparser` and :func:`run_flow`; standalone use:
``python -m priorlab.sceneflow.cli flow demo``.

Bad input raises :class:`~priorlab.errors.PriorlabError` (:class:`~priorlab.errors.UsageError` for a
wrong option); the top-level ``priorlab`` command prints it as one ``error: ...`` line and exits 1
(data) or 2 (usage). Output paths are checked for writability before any fit. Clouds are loaded in
float64 and the fit centres them, so map / UTM coordinates work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from priorlab.errors import UsageError
from priorlab.sceneflow.commands import _estimate, _eval
from priorlab.sceneflow.commands_run import EXECUTORS, FORMATS, _eval_sequence, _run
from priorlab.sceneflow.commands_sequences import _accumulate, _demo

METHODS = ("rigid", "nsfp", "fast", "free")

_FIT_NOTE = (
    "The flow is fitted on the filtered clouds (--max-range crop, --remove-ground, --points subsample) "
    "but evaluated at EVERY point of PC1 as given (NSFP / Fast-NSF query their neural field there; "
    "'free' interpolates from the nearest fitted points), so FLOW.npz always has one row per PC1 point."
)


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _add_fit_options(p, *, points=8192, max_iters=None, method="rigid", methods=METHODS):
    p.add_argument(
        "--method",
        default=method,
        choices=methods,
        help=f"rigid = ego motion + clusters registered as rigid bodies (ICP-Flow style, no optimiser, "
        f"every point; z up), nsfp = Neural Scene Flow "
        f"Prior (Li et al. 2021), fast = Fast Neural Scene Flow (Li et al. 2023, distance-transform "
        f"loss), free = per-point free variables (default {method})",
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
    sub = flow.add_subparsers(dest="flow_command", metavar="{estimate,run,eval,demo,accumulate}",
                              required=True)

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
    p.add_argument("--ego-motion", metavar="POSE", default=None,
                   help="rigid only: the 4x4 pose mapping PC1 into PC2's frame (.npy, or text with 16 "
                   "or KITTI's 12 numbers); default: estimated by GICP")
    _add_drop_invalid(p)
    _add_rrd(p, gt_help="GT.npz (key 'flow', optional 'eval_mask') shown in the --rrd recording: GT "
             "arrows and per-point error")

    p = sub.add_parser(
        "run",
        help="flow for every consecutive pair of a sequence (resumable)",
        description="Estimate flow for every consecutive pair (frame k -> k+1) of SEQ and write one "
        "file per frame k into DIR: <frame name>.npz (key 'flow', as 'flow estimate'), or with "
        "--format av2-2024 the Argoverse 2 2024 Scene Flow Challenge layout <log_id>/<k:010d>.feather "
        "(every 5th frame) + metadata.json. SEQ is an Argoverse 2 log (sensors/lidar/*.feather + "
        "city_SE3_egovehicle.feather), a KITTI sequence (velodyne/*.bin, optional poses.txt, "
        "converted to lidar poses with calib.txt's Tr) or a folder of frames of one type "
        "(.bin/.pcd/.ply/.npy/...) with an optional poses file (the only *pose*.txt/.npy in it, or "
        "--poses). With poses, method 'rigid' uses inv(pose_k+1) @ pose_k as the ego motion. "
        "Every file is written whole (temp file, then rename): a killed run keeps every finished "
        "frame and a rerun skips them. A missing or unreadable frame, too few points, or poses "
        "that do not match the frames stop the run with one line (finished frames are kept); "
        "--skip-bad skips such pairs instead and lists them. " + _FIT_NOTE,
    )
    p.add_argument("seq", metavar="SEQ", help="sequence folder (AV2 log, KITTI sequence, folder of frames)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reruns resume)")
    _add_fit_options(p)
    p.add_argument("--poses", metavar="FILE", default=None,
                   help="one pose per frame (frame->world), text with 12 or 16 numbers per line or "
                   ".npy (T,4,4); overrides the poses found in SEQ")
    p.add_argument("--format", choices=FORMATS, default="npz",
                   help="npz = one <frame>.npz per frame (default); av2-2024 = AV2 2024 challenge "
                   "submission folder (float16 feather, every 5th frame, metadata.json)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="pairs estimated in parallel (one torch thread each; default 1)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local = this machine (process pool with --jobs > 1); ray = Ray tasks "
                   "(embedded Ray, or the cluster in $RAY_ADDRESS)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip pairs with a missing, unreadable or too small frame (listed at the "
                   "end) instead of stopping")
    _add_drop_invalid(p)
    _add_rrd(p, gt_help="folder of ground truth <frame>.npz (as 'flow eval') shown in the --rrd "
             "recording")

    p = sub.add_parser(
        "eval",
        help="compare a flow file (or a 'flow run' folder) with ground truth",
        description="Compare FLOW.npz (key 'flow') with GT.npz (key 'flow'; optional 'eval_mask' or 'mask', "
        "'classes' and 'dynamic' for the three-way EPE, as in the Argoverse 2 pair files). Given two "
        "folders (a 'flow run' output DIR and GT_DIR), every DIR/<name>.npz is compared with "
        "GT_DIR/<name>.npz (or an AV2 annotation GT_DIR/<name>.feather or "
        "GT_DIR/flow_labels/<name>.feather): metrics per frame and their mean over frames; frames "
        "without ground truth are listed and skipped.",
    )
    p.add_argument("flow", metavar="FLOW.npz|DIR")
    p.add_argument("gt", metavar="GT.npz|GT_DIR")
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
    _add_fit_options(p, methods=METHODS + ("none",))
    _add_drop_invalid(p)

    flow.set_defaults(func=run_flow)
    return flow


def _add_rrd(p, gt_help):
    p.add_argument("--rrd", metavar="FILE.rrd", default=None,
                   help="also write a 3-D rerun recording (both clouds, flow arrows coloured by speed, "
                   "clusters for 'rigid'; open with: rerun FILE.rrd); needs rerun-sdk")
    p.add_argument("--gt", metavar="GT", default=None, help=gt_help)


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
    handlers = {"estimate": _estimate, "run": _run, "eval": _eval_any, "demo": _demo,
                "accumulate": _accumulate}
    if cmd not in handlers:
        raise UsageError(
            "missing subcommand: use 'flow estimate', 'flow run', 'flow eval', 'flow demo' or "
            "'flow accumulate'"
        )
    try:
        return int(handlers[cmd](args) or 0)
    except KeyboardInterrupt:
        print("interrupted: stopped before anything was written", file=sys.stderr)
        return 130


def _eval_any(args) -> int:
    """``flow eval``: one pair (two files) or a ``flow run`` folder against a ground-truth folder."""
    return _eval_sequence(args) if Path(args.flow).is_dir() else _eval(args)


def main(argv=None) -> int:
    """``python -m priorlab.sceneflow.cli flow ...``: the ``priorlab`` command (same errors, exit codes)."""
    from priorlab.cli import main as priorlab_main

    return priorlab_main(argv)


if __name__ == "__main__":
    sys.exit(main())
