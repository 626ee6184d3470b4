"""Reading lidar point clouds and scene-flow pairs; saving estimated flow.

Formats read by :func:`load_points` (chosen by file extension):

* ``.npy`` -- a 2-D array ``(N, >=3)``; the first three columns are x, y, z.
* ``.npz`` -- the array under ``key=`` or under ``pc``/``points``/``pc0`` (in that order) or the only
  array in the archive.
* ``.bin`` -- raw little-endian float32 records as written by KITTI (4 columns: x, y, z, reflectance)
  and nuScenes (``*.pcd.bin``, 5 columns: x, y, z, intensity, ring). The column count is detected from
  the file size and the plausibility of the values; pass ``bin_columns=4`` or ``5`` to force it.
* ``.pcd`` -- PCD v0.7 (and v0.6-style headers) with ``DATA ascii`` or ``DATA binary``; needs fields
  x, y, z. ``binary_compressed`` is not supported (re-save as binary).
* ``.ply`` -- ``ascii`` or ``binary_little_endian``/``binary_big_endian``, element ``vertex`` with
  properties x, y, z (other elements after the vertices are ignored).
* ``.feather`` -- an Argoverse 2 lidar sweep (columns x, y, z[, intensity]); needs pandas + pyarrow.
* ``.las`` / ``.laz`` -- ASPRS LAS point clouds (x, y, z scaled to metres, then intensity and the
  other point dimensions); needs laspy, and lazrs for ``.laz`` (``pip install 'priorlab[las]'``).

Coordinates come back as float32 by default; pass ``dtype=np.float64`` for map / UTM coordinates far
from the origin (float32 resolves only ~6 cm at 1e6 m; loading a float64 source that far as float32
warns).

Every problem (unknown extension, unreadable or truncated file, no points, non-finite values) raises
:class:`priorlab.errors.PriorlabError` with a one-line message naming the fix.

:func:`load_av2_pair` reads one Argoverse 2 sweep pair with its official scene-flow labels, either
from the raw log layout or from a converted ``pair_*.npz``; :func:`save_flow` / :func:`load_flow`
store estimated flow as ``.npz`` with key ``flow``.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError
from priorlab.sceneflow.formats import (
    pandas_or_error,
    read_bin,
    read_feather,
    read_las,
    read_npy,
    read_npz,
    read_pcd,
    read_ply,
)

__all__ = [
    "load_points",
    "load_av2_pair",
    "save_flow",
    "load_flow",
    "SUPPORTED_EXTENSIONS",
    "sample_data_dir",
    "av2_sample_pair",
]

SUPPORTED_EXTENSIONS = (".npy", ".npz", ".bin", ".pcd", ".ply", ".feather", ".las", ".laz")
_READERS = {
    ".npy": lambda p, o: read_npy(p),
    ".npz": lambda p, o: read_npz(p, o["key"]),
    ".bin": lambda p, o: read_bin(p, o["bin_columns"]),
    ".pcd": lambda p, o: read_pcd(p),
    ".ply": lambda p, o: read_ply(p),
    ".feather": lambda p, o: read_feather(p),
    ".las": lambda p, o: read_las(p),
    ".laz": lambda p, o: read_las(p),
}
_FLOAT32_COARSE_M = 0.01  # warn when a float32 result resolves coordinates only this coarsely


# --------------------------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------------------------- #
def _path(path) -> Path:
    try:
        p = Path(path).expanduser()
    except TypeError:
        raise PriorlabError(
            f"expected a file path, got {type(path).__name__}; pass a str or pathlib.Path"
        ) from None
    if not p.exists():
        raise PriorlabError(f"file not found: {p}; check the path")
    return p


def _finish(
    points: np.ndarray, columns: int, p: Path, drop_invalid: bool, dtype, nan_hint: str
) -> np.ndarray:
    """Common checks: 2-D, enough columns, non-empty, finite; returns ``dtype`` (N, columns)."""
    if points.ndim != 2:
        raise PriorlabError(
            f"{p.name}: expected a 2-D array of points (N, >=3), got shape {points.shape}; "
            f"reshape it to (N, 3)"
        )
    if points.shape[1] < 3:
        raise PriorlabError(
            f"{p.name}: points have {points.shape[1]} column(s), need at least x, y, z; save an (N, 3) array"
        )
    if points.shape[1] < columns:
        raise PriorlabError(
            f"{p.name}: asked for columns={columns} but the file has {points.shape[1]}; "
            f"use columns<={points.shape[1]}"
        )
    if points.dtype.kind not in "fiu":
        raise PriorlabError(f"{p.name}: point array has dtype {points.dtype}, not numeric; save float32 xyz")
    pts = np.ascontiguousarray(points[:, :columns], dtype=dtype)
    if len(pts) == 0:
        raise PriorlabError(f"{p.name}: the file holds no points; check that the right file was given")
    finite = np.isfinite(pts).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        if drop_invalid:
            pts = pts[finite]
            if len(pts) == 0:
                raise PriorlabError(
                    f"{p.name}: all {bad} points are NaN/inf; the file carries no usable points"
                )
        else:
            raise PriorlabError(f"{p.name}: {bad} of {len(pts)} points contain NaN/inf; {nan_hint}")
    if dtype == np.float32 and points.dtype not in (np.float32, np.float16):  # the cast may lose precision
        top = float(np.abs(pts[:, :3]).max())
        step = float(np.spacing(np.float32(top)))
        if step >= _FLOAT32_COARSE_M:
            warnings.warn(
                f"{p.name}: coordinates reach {top:.3g} m, where float32 resolves only "
                f"{step:.2g} m; "
                f"load with dtype=np.float64 to keep them",
                UserWarning,
                stacklevel=3,
            )
    return pts


def _check_columns(columns) -> int:
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 3:
        raise PriorlabError(
            f"columns must be an integer >= 3 (x, y, z first), got {columns!r}; use columns=3"
        )
    return int(columns)


# --------------------------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------------------------- #
def load_points(
    path,
    *,
    columns: int = 3,
    bin_columns: int | None = None,
    key: str | None = None,
    drop_invalid: bool = False,
    dtype=np.float32,
) -> np.ndarray:
    """Load a lidar point cloud as an array of shape ``(N, columns)`` (float32, or ``dtype=np.float64``).

    Columns are x, y, z first, then the file's further per-point values in file order (intensity,
    ring, ...). ``bin_columns`` forces the record width of a ``.bin`` file; ``key`` selects the array
    in an ``.npz``; ``drop_invalid=True`` silently drops points with NaN/inf instead of raising.
    """
    return _load_points(
        path,
        columns=columns,
        bin_columns=bin_columns,
        key=key,
        drop_invalid=drop_invalid,
        dtype=dtype,
        nan_hint="pass drop_invalid=True to drop them",
    )


def _load_points(path, *, columns, bin_columns, key, drop_invalid, dtype, nan_hint) -> np.ndarray:
    """:func:`load_points` with the NaN message's hint chosen by the caller (the CLI names its flag)."""
    columns = _check_columns(columns)
    if dtype not in (np.float32, np.float64, "float32", "float64"):
        raise PriorlabError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    dtype = np.dtype(dtype)
    p = _path(path)
    if p.is_dir():
        raise PriorlabError(
            f"{p} is a directory; pass a point-cloud file ({', '.join(SUPPORTED_EXTENSIONS)})"
        )
    ext = p.suffix.lower()
    if ext not in _READERS:
        raise PriorlabError(
            f"{p.name}: unknown point-cloud extension {ext or '(none)'!r}; "
            f"use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        arr = np.asarray(_READERS[ext](p, {"key": key, "bin_columns": bin_columns}))
    except OSError as e:
        raise PriorlabError(
            f"{p.name}: cannot read the file ({e.strerror or e}); check its permissions"
        ) from None
    if arr.ndim == 2 and arr.shape[0] == 0:
        raise PriorlabError(f"{p.name}: the file holds no points; check that the right file was given")
    return _finish(arr, columns, p, drop_invalid, dtype, nan_hint)


def save_flow(path, flow, **extra) -> Path:
    """Save an ``(N, 3)`` flow array (and any extra arrays) to an ``.npz`` file with key ``flow``."""
    p = Path(path).expanduser()
    if p.suffix.lower() != ".npz":
        raise PriorlabError(f"flow files are .npz archives; name the file {p.with_suffix('.npz').name!r}")
    f = np.asarray(flow)
    if f.ndim != 2 or f.shape[1] != 3:
        raise PriorlabError(f"flow must have shape (N, 3), got {f.shape}; pass one 3-vector per point")
    if f.dtype.kind != "f" or not np.isfinite(f).all():
        raise PriorlabError("flow must be finite floating-point values; check the estimate for NaN/inf")
    if "flow" in extra:
        raise PriorlabError("'flow' is reserved for the flow array; rename the extra entry")
    arrays = {k: np.asarray(v) for k, v in extra.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise PriorlabError(
                f"extra entry {k!r} is not a plain array; pass numbers or numeric arrays only"
            )
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, flow=f.astype(np.float32), **arrays)
    except OSError as e:
        raise PriorlabError(f"cannot write {p} ({e.strerror or e}); choose a writable folder") from None
    return p


def load_flow(path) -> dict:
    """Load a flow ``.npz`` written by :func:`save_flow`; returns a dict of arrays with key ``flow``."""
    p = _path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise PriorlabError(f"{p.name}: unreadable flow file ({e}); write it with save_flow") from None
    if "flow" not in out:
        raise PriorlabError(
            f"{p.name}: no 'flow' array (has: {', '.join(out) or 'nothing'}); write it with save_flow"
        )
    f = out["flow"]
    if f.ndim != 2 or f.shape[1] != 3:
        raise PriorlabError(
            f"{p.name}: 'flow' has shape {f.shape}, expected (N, 3); the file is not a flow file"
        )
    return out


# --------------------------------------------------------------------------------------------- #
# Argoverse 2
# --------------------------------------------------------------------------------------------- #
def _quat_to_R(qw, qx, qy, qz) -> np.ndarray:
    q = np.array([qw, qx, qy, qz], dtype=np.float64)
    q = q / np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _sim2_matrix(d: dict) -> np.ndarray:
    """3x3 matrix A with pixel = A @ [x_city, y_city, 1] (AV2 Sim(2): img = s * (R xy + t))."""
    R = np.asarray(d["R"], dtype=np.float64).reshape(2, 2)
    t = np.asarray(d["t"], dtype=np.float64).reshape(2)
    s = float(d["s"])
    A = np.eye(3)
    A[:2, :2] = s * R
    A[:2, 2] = s * t
    return A


def _eval_mask(pc0: np.ndarray, is_ground0: np.ndarray) -> np.ndarray:
    """AV2 ``compute_eval_point_mask``: |x| <= 50 m and |y| <= 50 m and not ground."""
    close = (np.abs(pc0[:, 0]) <= 50) & (np.abs(pc0[:, 1]) <= 50)
    return close & ~is_ground0.astype(bool)


def _load_av2_npz(p: Path) -> dict:
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise PriorlabError(f"{p.name}: unreadable pair archive ({e}); convert the pair again") from None
    missing = [k for k in ("pc0", "pc1") if k not in out]
    if missing:
        raise PriorlabError(
            f"{p.name}: not an AV2 pair archive (missing {', '.join(missing)}); "
            f"pass a pair_*.npz or a raw AV2 log directory"
        )
    for k in ("pc0", "pc1", "flow", "ego_flow"):
        if k in out:
            out[k] = np.ascontiguousarray(out[k][:, :3], dtype=np.float32)
    if "ego_motion" in out:
        out["ego_motion"] = np.asarray(out["ego_motion"], dtype=np.float32).reshape(4, 4)
    if "is_ground0" in out and "eval_mask" not in out:
        out["eval_mask"] = _eval_mask(out["pc0"], out["is_ground0"])
    return out


def _load_av2_raw(log: Path, timestamp_ns) -> dict:
    pd = pandas_or_error()
    lidar_dir = log / "sensors" / "lidar"
    sweeps = sorted(lidar_dir.glob("*.feather"), key=lambda q: int(q.stem) if q.stem.isdigit() else -1)
    if len(sweeps) < 2:
        raise PriorlabError(
            f"{lidar_dir}: need at least two lidar sweeps (*.feather) for a pair; check the log dir"
        )
    stamps = [int(q.stem) for q in sweeps]
    if timestamp_ns is None:
        i = 0
    else:
        if int(timestamp_ns) not in stamps[:-1]:
            raise PriorlabError(
                f"no sweep {timestamp_ns} with a successor in {lidar_dir}; "
                f"use one of {stamps[0]}..{stamps[-2]}"
            )
        i = stamps.index(int(timestamp_ns))
    t0, t1 = stamps[i], stamps[i + 1]
    out: dict = {
        "pc0": load_points(sweeps[i]),
        "pc1": load_points(sweeps[i + 1]),
        "timestamp_ns": np.array([t0, t1], dtype=np.int64),
    }
    for j, f in ((0, sweeps[i]), (1, sweeps[i + 1])):
        df = pd.read_feather(f)
        for c, name in (
            ("intensity", "intensity"),
            ("laser_number", "laser_number"),
            ("offset_ns", "offset_ns"),
        ):
            if c in df.columns:
                out[f"{name}{j}"] = df[c].to_numpy()

    # ego poses
    pose_file = log / "city_SE3_egovehicle.feather"
    if pose_file.exists():
        poses = pd.read_feather(pose_file).set_index("timestamp_ns")
        for j, t in ((0, t0), (1, t1)):
            if t in poses.index:
                r = poses.loc[t]
                T = np.eye(4)
                T[:3, :3] = _quat_to_R(r["qw"], r["qx"], r["qy"], r["qz"])
                T[:3, 3] = [r["tx_m"], r["ty_m"], r["tz_m"]]
                out[f"city_SE3_ego{j}"] = T
    ego_file = log / "ego_motion.npz"
    if ego_file.exists():
        with np.load(ego_file) as z:
            arr = z["ego_motion"] if "ego_motion" in z.files else z[z.files[0]]
        out["ego_motion"] = np.asarray(arr, dtype=np.float32).reshape(4, 4)
    elif "city_SE3_ego0" in out and "city_SE3_ego1" in out:
        out["ego_motion"] = (np.linalg.inv(out["city_SE3_ego1"]) @ out["city_SE3_ego0"]).astype(np.float32)

    # official scene-flow labels (one row per pc0 point)
    label_file = None
    for cand in (log / "flow_labels" / f"{t0}.feather", log / "flow_labels.feather"):
        if cand.exists():
            label_file = cand
            break
    if label_file is not None:
        lab = pd.read_feather(label_file)
        if len(lab) != len(out["pc0"]):
            raise PriorlabError(
                f"{label_file.name}: {len(lab)} label rows for {len(out['pc0'])} points of sweep {t0}; "
                f"labels belong to another sweep"
            )
        out["flow"] = lab[["flow_tx_m", "flow_ty_m", "flow_tz_m"]].to_numpy(dtype=np.float32)
        out["classes"] = lab["classes"].to_numpy().astype(np.uint8)
        out["dynamic"] = lab["dynamic"].to_numpy().astype(bool)
        if "is_ground_0" in lab.columns:
            out["is_ground0"] = lab["is_ground_0"].to_numpy().astype(bool)
    if "ego_motion" in out:
        T = out["ego_motion"].astype(np.float64)
        p0 = out["pc0"].astype(np.float64)
        out["ego_flow"] = (p0 @ T[:3, :3].T + T[:3, 3] - p0).astype(np.float32)

    # ground-height raster of the map
    map_dir = log / "map"
    gh = sorted(map_dir.glob("*ground_height_surface*.npy")) if map_dir.is_dir() else []
    sim = sorted(map_dir.glob("*img_Sim2_city.json")) if map_dir.is_dir() else []
    if gh and sim:
        out["ground_height"] = np.load(gh[0]).astype(np.float32)
        out["ground_height_sim2"] = _sim2_matrix(json.loads(sim[0].read_text()))
        if "is_ground0" not in out and "city_SE3_ego0" in out:
            from priorlab.sceneflow.preprocess import ground_mask_from_height_map

            out["is_ground0"] = ground_mask_from_height_map(
                out["pc0"], out["ground_height"], out["ground_height_sim2"], city_SE3_ego=out["city_SE3_ego0"]
            )
    if "city_SE3_ego1" in out and "ground_height" in out:
        from priorlab.sceneflow.preprocess import ground_mask_from_height_map

        out["is_ground1_map"] = ground_mask_from_height_map(
            out["pc1"], out["ground_height"], out["ground_height_sim2"], city_SE3_ego=out["city_SE3_ego1"]
        )
    if "is_ground0" in out:
        out["eval_mask"] = _eval_mask(out["pc0"], out["is_ground0"])
    return out


def load_av2_pair(log_dir_or_npz, *, timestamp_ns: int | None = None) -> dict:
    """Load one Argoverse 2 sweep pair with its scene-flow labels.

    ``log_dir_or_npz`` is either a raw AV2 log directory (``sensors/lidar/*.feather``, optional
    ``flow_labels.feather`` or ``flow_labels/<t0>.feather``, ``ego_motion.npz``,
    ``city_SE3_egovehicle.feather``, ``map/``) or a converted ``pair_*.npz`` (or a directory that
    holds exactly one). For the raw layout the pair starts at ``timestamp_ns`` (default: first sweep).

    Returned keys (numpy arrays): ``pc0`` (N0,3) and ``pc1`` (N1,3) float32 in their own ego frames;
    ``ego_motion`` 4x4 = ego1_SE3_ego0 (maps t0-ego coordinates into t1-ego coordinates); and, when
    labels are present, ``flow`` (N0,3) (AV2 convention: includes ego-motion, so ``pc0 + flow`` lies on
    ``pc1``), ``classes`` (N0,) uint8 (0 = background, k = k-th AV2 annotation category),
    ``dynamic`` (N0,) bool, ``is_ground0`` (N0,) bool and ``eval_mask`` (N0,) bool (AV2
    ``compute_eval_point_mask``: |x|,|y| <= 50 m and not ground). Also, where available:
    ``ego_flow``, ``ground_height`` (map raster) + ``ground_height_sim2`` (3x3 city->pixel matrix),
    ``city_SE3_ego0/1``, ``timestamp_ns``, ``intensity0/1``, ...
    """
    p = _path(log_dir_or_npz)
    if p.is_file():
        if p.suffix.lower() != ".npz":
            raise PriorlabError(f"{p.name}: expected a pair_*.npz archive or a raw AV2 log directory")
        return _load_av2_npz(p)
    if (p / "sensors" / "lidar").is_dir():
        return _load_av2_raw(p, timestamp_ns)
    pairs = sorted(p.glob("pair_*.npz"))
    if len(pairs) == 1:
        return _load_av2_npz(pairs[0])
    raws = (
        [d for d in (p / "raw").glob("*") if (d / "sensors" / "lidar").is_dir()]
        if (p / "raw").is_dir()
        else []
    )
    if len(raws) == 1 and not pairs:
        return _load_av2_raw(raws[0], timestamp_ns)
    if pairs:
        raise PriorlabError(f"{p} holds {len(pairs)} pair_*.npz files; pass one of them")
    raise PriorlabError(
        f"{p}: neither an AV2 log (no sensors/lidar/) nor a pair_*.npz; pass the log directory "
        f"or the converted pair file"
    )


def sample_data_dir() -> Path:
    """The real sample folder ``<shared>/data/sceneflow``: ``$PRIORLAB_SHARED``, else the
    ``shared`` folder beside this checkout (the layout of the project's machines and CI).

    The data are non-commercial (KITTI, Argoverse, nuScenes licences): used by tests and
    benchmarks from there, never copied into the project.
    """
    root = os.environ.get("PRIORLAB_SHARED")
    base = Path(root) if root else Path(__file__).resolve().parents[3].parent / "shared"
    return base / "data" / "sceneflow"


def av2_sample_pair() -> Path:
    """The converted real Argoverse 2 pair, with a clear error when the shared data are absent."""
    folder = sample_data_dir() / "av2_api_val_pair"
    found = sorted(folder.glob("pair_*.npz"))
    if not found:
        raise PriorlabError(
            f"the real Argoverse 2 sample pair is not in {folder}; set "
            "PRIORLAB_SHARED to the folder holding data/sceneflow"
        )
    return found[0]
