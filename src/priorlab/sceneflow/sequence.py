"""Lidar sequences on disk: find the frames (in time order) and their poses.

Layouts recognised by :func:`discover_sequence` (checked in this order):

* **Argoverse 2 log** -- ``sensors/lidar/<timestamp_ns>.feather`` and ``city_SE3_egovehicle.feather``
  (one ego pose per timestamp; every sweep must have one). The log id is the folder name.
* **KITTI sequence** -- ``velodyne/*.bin`` with ``poses.txt`` beside it (optional). KITTI odometry
  poses are of the left camera; when ``calib.txt`` has a ``Tr:`` line they are converted to lidar
  poses (``inv(Tr) @ P @ Tr``), as SemanticKITTI does.
* **folder of frames** -- files of ONE point-cloud type (``.bin .pcd .ply .npy .npz .feather .las
  .laz``), with an optional poses file: the only ``*.txt``/``*.npy`` whose name contains
  "pose", or one given with ``poses=``.

Poses (any layout) are frame->world or frame->frame 0, text with 12 (3x4) or 16 (4x4) numbers
per line (optionally after a frame number, '#' comments allowed) or ``.npy``/``.npz`` (T,4,4),
one per frame in order; a count that does not match the frames is an error.

Frames are ordered by their numeric name when every name is a number (KITTI indices, AV2
timestamps), else by name. A **missing frame** is detected from those numbers: a hole in
consecutive indices (median step 1), or a step over 1.5x the median step (timestamps); needs three
frames or more. The pair across a gap would span two sweep intervals, so it is reported
(:attr:`Sequence.gaps`), never estimated silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError
from priorlab.sceneflow.io import SUPPORTED_EXTENSIONS

__all__ = ["Sequence", "discover_sequence", "relative_pose", "read_flow_output", "read_frame_gt",
           "GAP_FACTOR"]

GAP_FACTOR = 1.5  # a timestamp step this many times the median step means a dropped sweep


@dataclass
class Sequence:
    """Frames of one lidar sequence in time order.

    ``kind``: "av2", "kitti" or "folder". ``frames``: file of each frame. ``poses``: (T,4,4)
    frame->world (or frame->frame 0) or None. ``log_id``: the sequence's name (AV2 log id, else
    the folder name). ``gaps``: indices k where a frame is missing between frame k and k+1.
    ``pose_source``: where the poses came from (for messages).
    """

    root: Path
    kind: str
    frames: list[Path]
    poses: np.ndarray | None
    log_id: str
    gaps: list[int] = field(default_factory=list)
    pose_source: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def names(self) -> list[str]:
        """Frame names (file stems; AV2 timestamps, KITTI indices)."""
        return [_stem(p) for p in self.frames]

    def ego_motion(self, k: int) -> np.ndarray | None:
        """The 4x4 pose mapping frame k's coordinates into frame k+1's, or None without poses."""
        return None if self.poses is None else relative_pose(self.poses[k], self.poses[k + 1])


def relative_pose(pose_k: np.ndarray, pose_next: np.ndarray) -> np.ndarray:
    """``inv(pose_{k+1}) @ pose_k``: maps frame k's coordinates into frame k+1's."""
    return np.linalg.inv(np.asarray(pose_next, np.float64)) @ np.asarray(pose_k, np.float64)


def _stem(p: Path) -> str:
    name = p.name
    return name[: -len(".pcd.bin")] if name.lower().endswith(".pcd.bin") else p.stem


def _order(files: list[Path]) -> list[Path]:
    stems = [_stem(f) for f in files]
    if stems and all(s.isdigit() for s in stems):
        return [f for _, f in sorted(zip((int(s) for s in stems), files))]
    return sorted(files, key=lambda f: f.name)


def _gaps(frames: list[Path]) -> list[int]:
    """Frames k after which a frame is missing: numbered frames whose step exceeds 1 (indices,
    median step 1) or GAP_FACTOR x the median step (timestamps)."""
    stems = [_stem(f) for f in frames]
    if len(stems) < 3 or not all(s.isdigit() for s in stems):
        return []
    step = np.diff(np.array([int(s) for s in stems], dtype=np.int64))
    median = float(np.median(step))
    limit = 1 if median == 1 else GAP_FACTOR * median
    return [int(k) for k in np.flatnonzero(step > limit)]


def discover_sequence(path, poses=None) -> Sequence:
    """The frames and poses of the sequence at ``path`` (see the module docstring).

    ``poses``: a pose file that overrides the one found in the folder. Raises
    :class:`PriorlabError` for an empty folder, fewer than two frames, mixed frame types, or
    poses that do not match the frames.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise PriorlabError(f"sequence folder not found: {str(root)!r}")
    if not root.is_dir():
        raise PriorlabError(f"{str(root)!r} is a file; give the folder of a sequence (AV2 log, "
                            "KITTI sequence or a folder of frames)")
    if (root / "sensors" / "lidar").is_dir():
        seq = _av2(root)
    elif (root / "velodyne").is_dir():
        seq = _kitti(root)
    else:
        seq = _folder(root)
    if len(seq.frames) < 2:
        raise PriorlabError(f"{root}: found {len(seq.frames)} frame(s); a sequence needs at least "
                            "two to estimate flow between")
    if poses is not None:
        seq.poses, seq.pose_source = _read_pose_file(Path(poses)), str(poses)
    if seq.poses is not None:
        _check_poses(seq)
    return seq


def _check_poses(seq: Sequence) -> None:
    from priorlab.sceneflow.trajectory import as_poses

    n, m = len(seq.poses), len(seq.frames)
    if n != m:
        raise PriorlabError(f"{seq.pose_source}: {n} poses for {m} frames in {seq.root}; give exactly "
                            "one pose per frame, in order (or drop the poses file)")
    as_poses(seq.poses, m)  # finite and rigid, with a message naming the bad pose


def _read_pose_file(p: Path) -> np.ndarray:
    from priorlab.sceneflow.commands_sequences import read_poses

    return read_poses(p)


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------


def _av2(root: Path) -> Sequence:
    from priorlab.sceneflow.formats import pandas_or_error
    from priorlab.sceneflow.io import _quat_to_R

    lidar = root / "sensors" / "lidar"
    frames = [f for f in lidar.glob("*.feather") if f.stem.isdigit()]
    if not frames:
        raise PriorlabError(f"{lidar}: no <timestamp_ns>.feather sweeps; not an Argoverse 2 log")
    frames = _order(frames)
    seq = Sequence(root, "av2", frames, None, root.name, _gaps(frames))
    pose_file = root / "city_SE3_egovehicle.feather"
    if pose_file.exists():
        pd = pandas_or_error()
        try:
            table = pd.read_feather(pose_file).set_index("timestamp_ns")
        except Exception as e:  # noqa: BLE001 - corrupt file or wrong columns
            raise PriorlabError(f"{pose_file}: unreadable ego poses ({type(e).__name__}); "
                                "check the file") from None
        stamps = [int(f.stem) for f in frames]
        missing = [t for t in stamps if t not in table.index]
        if missing:
            raise PriorlabError(f"{pose_file.name}: no ego pose for {len(missing)} of {len(stamps)} "
                                f"sweeps (first: {missing[0]}); the log's poses do not match its sweeps")
        P = np.tile(np.eye(4), (len(stamps), 1, 1))
        for k, t in enumerate(stamps):
            r = table.loc[t]
            P[k, :3, :3] = _quat_to_R(r["qw"], r["qx"], r["qy"], r["qz"])
            P[k, :3, 3] = [r["tx_m"], r["ty_m"], r["tz_m"]]
        seq.poses, seq.pose_source = P, str(pose_file)
    return seq


def _kitti(root: Path) -> Sequence:
    frames = _order(list((root / "velodyne").glob("*.bin")))
    if not frames:
        raise PriorlabError(f"{root / 'velodyne'}: no .bin scans; not a KITTI sequence")
    seq = Sequence(root, "kitti", frames, None, root.name, _gaps(frames))
    pose_file = root / "poses.txt"
    if pose_file.exists():
        P = _read_pose_file(pose_file)
        Tr = _kitti_tr(root / "calib.txt")
        if Tr is not None:  # camera poses -> lidar poses
            P = np.linalg.inv(Tr) @ P @ Tr
        seq.poses, seq.pose_source = P, str(pose_file)
    return seq


def _kitti_tr(calib: Path) -> np.ndarray | None:
    if not calib.exists():
        return None
    for line in calib.read_text().splitlines():
        if line.startswith("Tr:"):
            try:
                v = [float(x) for x in line[3:].split()]
            except ValueError:
                v = []
            if len(v) != 12:
                raise PriorlabError(f"{calib}: the Tr line needs 12 numbers (3x4 velodyne->camera)")
            return np.vstack([np.reshape(v, (3, 4)), [0, 0, 0, 1.0]])
    return None


def _folder(root: Path) -> Sequence:
    files = [f for f in root.iterdir() if f.is_file() and not f.name.startswith(".")]
    clouds = [f for f in files if _ext(f) in SUPPORTED_EXTENSIONS and not _is_pose_name(f)]
    if not clouds:
        raise PriorlabError(
            f"{root}: no point-cloud frames found (looked for sensors/lidar/*.feather, velodyne/*.bin "
            f"and files {', '.join(SUPPORTED_EXTENSIONS)}); check the folder")
    kinds = sorted({_ext(f) for f in clouds})
    if len(kinds) > 1:
        raise PriorlabError(f"{root}: frames of several types ({', '.join(kinds)}); keep one type per "
                            "sequence folder so the order is unambiguous")
    frames = _order(clouds)
    seq = Sequence(root, "folder", frames, None, root.name, _gaps(frames))
    pose_files = [f for f in files if _is_pose_name(f)]
    if len(pose_files) > 1:
        raise PriorlabError(f"{root}: several pose files ({', '.join(sorted(f.name for f in pose_files))}); "
                            "pick one with --poses")
    if pose_files:
        seq.poses, seq.pose_source = _read_pose_file(pose_files[0]), str(pose_files[0])
    return seq


def _ext(f: Path) -> str:
    return f.suffix.lower()


def _is_pose_name(f: Path) -> bool:
    return "pose" in f.name.lower() and _ext(f) in (".txt", ".npy", ".npz")


# --------------------------------------------------------------------------------------------
# per-frame outputs and ground truth of a run
# --------------------------------------------------------------------------------------------


def read_flow_output(path) -> dict:
    """A ``flow run`` output: a flow ``.npz`` (all its arrays) or an AV2 challenge ``.feather``."""
    path = Path(path)
    if path.suffix == ".npz":
        from priorlab.sceneflow.io import load_flow

        return load_flow(path)
    from priorlab.sceneflow.formats import pandas_or_error

    df = pandas_or_error().read_feather(path)
    return {"flow": df[["flow_tx_m", "flow_ty_m", "flow_tz_m"]].to_numpy(np.float32)}


def read_frame_gt(gt_root, name: str) -> dict:
    """Ground truth of frame ``name``: ``<gt>/<name>.npz`` (as ``flow eval``'s GT.npz), else an
    AV2 label file ``<gt>/<name>.feather`` or ``<gt>/flow_labels/<name>.feather`` (one row per
    point; evaluated where ``is_valid``/``valid`` and ``is_close``/``close`` hold and
    ``is_ground_0`` does not, for the columns present); {} if none."""
    from priorlab.sceneflow.commands import _npz

    root = Path(gt_root)
    if (root / f"{name}.npz").is_file():
        return _npz(root / f"{name}.npz", "ground truth")
    for f in (root / f"{name}.feather", root / "flow_labels" / f"{name}.feather"):
        if f.is_file():
            from priorlab.sceneflow.formats import pandas_or_error

            df = pandas_or_error().read_feather(f)
            gt = {"flow": df[["flow_tx_m", "flow_ty_m", "flow_tz_m"]].to_numpy(np.float32)}
            aliases = (("classes", ("classes", "category_indices")), ("dynamic", ("dynamic", "is_dynamic")))
            for key, cols in aliases:
                col = next((c for c in cols if c in df.columns), None)
                if col is not None:
                    gt[key] = df[col].to_numpy()
            mask = np.ones(len(df), bool)
            for cols, keep in ((("is_valid", "valid"), True), (("is_close", "close"), True),
                               (("is_ground_0",), False)):
                col = next((c for c in cols if c in df.columns), None)
                if col is not None:
                    mask &= df[col].to_numpy(bool) == keep
            gt["eval_mask"] = mask
            return gt
    return {}
