"""Argoverse 2 2024 Scene Flow Challenge submission files (``priorlab flow run --format av2-2024``).

The 2024 challenge (evaluated by Bucket Normalized EPE, Khatri et al. 2024, "I Can't Believe It's
Not Scene Flow!", arXiv:2403.04739; tooling in kylevedder/BucketedSceneFlowEval and
kylevedder/SceneFlowZoo ``av2_scene_flow_competition_submit.py``) takes a zip holding:

* ``metadata.json`` -- ``{"Is Supervised?": <bool>}`` (did the method use any AV2 labels; the
  methods here use none);
* ``<log_id>/<k:010d>.feather`` for every 5th sweep of each log (k = 0, 5, 10, ...; k is the
  sweep's index in the log, whose pair is sweep k -> k+1), in the format of the supervised
  flow labels without the class column: ``is_valid`` (bool), ``flow_tx_m``, ``flow_ty_m``,
  ``flow_tz_m`` (float16, m), one row per point of sweep k, ground included, in sweep k's
  ego frame and including ego motion (our flow convention: ``pc_k + flow`` lies on sweep k+1).

The 2023 challenge (av2-api ``SUBMISSION_FORMAT.md``) was different (timestamp file names, only
the evaluated points, an ``is_dynamic`` column); it is not written here.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError

__all__ = ["EVERY_KTH", "COLUMNS", "frame_file", "is_submitted", "write_av2_frame",
           "write_metadata", "read_av2_submission", "zip_submission"]

EVERY_KTH = 5  # the challenge scores every 5th sweep of a log
FLOW_COLUMNS = ("flow_tx_m", "flow_ty_m", "flow_tz_m")
COLUMNS = ("is_valid", *FLOW_COLUMNS)
METADATA = "metadata.json"


def is_submitted(k: int) -> bool:
    """Whether sweep index ``k`` of a log belongs in the submission."""
    return k % EVERY_KTH == 0


def frame_file(root, log_id: str, k: int) -> Path:
    """``<root>/<log_id>/<k:010d>.feather``."""
    return Path(root) / log_id / f"{int(k):010d}.feather"


def _frame(flow, is_valid=None):
    from priorlab.sceneflow.formats import pandas_or_error

    pd = pandas_or_error()
    f = np.asarray(flow, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != 3 or not np.isfinite(f).all():
        raise PriorlabError(f"flow must be a finite (N, 3) array, got shape {f.shape}")
    if np.abs(f).max(initial=0) > float(np.finfo(np.float16).max):
        raise PriorlabError("flow exceeds the float16 range of the AV2 format; check the estimate")
    valid = np.ones(len(f), bool) if is_valid is None else np.asarray(is_valid, bool).reshape(-1)
    if len(valid) != len(f):
        raise PriorlabError(f"is_valid has {len(valid)} entries for {len(f)} flow rows")
    data = {"is_valid": valid}
    data.update({c: f[:, i].astype(np.float16) for i, c in enumerate(FLOW_COLUMNS)})
    return pd.DataFrame(data)


def write_av2_frame(path, flow, is_valid=None) -> Path:
    """Write one submission frame atomically (a temp file, then ``os.replace``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.stem}.tmp{os.getpid()}.feather")
    try:
        _frame(flow, is_valid).to_feather(tmp)
        os.replace(tmp, p)
    except OSError as e:
        raise PriorlabError(f"cannot write {p} ({e.strerror or e}); choose a writable folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_metadata(root, *, is_supervised: bool = False) -> Path:
    """The challenge's ``metadata.json``: ``{"Is Supervised?": is_supervised}``."""
    p = Path(root) / METADATA
    p.write_text(json.dumps({"Is Supervised?": bool(is_supervised)}, indent=4))
    return p


def read_av2_submission(root, expected_rows: dict | None = None) -> dict:
    """Read a submission folder back and check it against the challenge format.

    Checks ``metadata.json`` (a bool under "Is Supervised?"), the file names (10-digit indices,
    multiples of 5), the columns (exactly :data:`COLUMNS`) and their dtypes (bool, float16),
    finite flow, and, with ``expected_rows`` (``{"<log_id>/<k:010d>.feather": n_points}``), the
    row counts and that no expected file is missing. Returns
    ``{"metadata": dict, "frames": {relative path: DataFrame}}``; raises PriorlabError naming
    the first problem.
    """
    from priorlab.sceneflow.formats import pandas_or_error

    pd = pandas_or_error()
    root = Path(root)
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise PriorlabError(f"{root}: no {METADATA}; the challenge needs it")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise PriorlabError(f"{meta_path}: not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("Is Supervised?"), bool):
        raise PriorlabError(f"{meta_path}: needs {{\"Is Supervised?\": true|false}}, got {meta!r}")
    frames = {}
    for f in sorted(root.glob("*/*.feather")):
        rel = f"{f.parent.name}/{f.name}"
        if not (f.stem.isdigit() and len(f.stem) == 10 and is_submitted(int(f.stem))):
            raise PriorlabError(f"{rel}: submission files are named <k:010d>.feather with k a "
                                f"multiple of {EVERY_KTH}")
        try:
            df = pd.read_feather(f)
        except Exception as e:  # noqa: BLE001 - corrupt file
            raise PriorlabError(f"{rel}: unreadable feather file ({type(e).__name__})") from None
        if tuple(df.columns) != COLUMNS:
            raise PriorlabError(f"{rel}: columns {list(df.columns)}, expected {list(COLUMNS)}")
        if df["is_valid"].dtype != bool:
            raise PriorlabError(f"{rel}: is_valid has dtype {df['is_valid'].dtype}, expected bool")
        for c in FLOW_COLUMNS:
            if df[c].dtype != np.float16:
                raise PriorlabError(f"{rel}: {c} has dtype {df[c].dtype}, expected float16")
        if not np.isfinite(df[list(FLOW_COLUMNS)].to_numpy(np.float32)).all():
            raise PriorlabError(f"{rel}: flow has NaN/inf values")
        frames[rel] = df
    if not frames:
        raise PriorlabError(f"{root}: no <log_id>/<k:010d>.feather files")
    for rel, n in (expected_rows or {}).items():
        if rel not in frames:
            raise PriorlabError(f"{rel}: missing from the submission")
        if len(frames[rel]) != n:
            raise PriorlabError(f"{rel}: {len(frames[rel])} rows, expected {n} (one per point of "
                                "the sweep)")
    return {"metadata": meta, "frames": frames}


def zip_submission(root, archive) -> Path:
    """Zip ``metadata.json`` and every ``<log_id>/<k:010d>.feather`` of ``root`` for upload
    (after :func:`read_av2_submission` passes)."""
    root, archive = Path(root), Path(archive)
    read_av2_submission(root)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(root / METADATA, arcname=METADATA)
        for f in sorted(root.glob("*/*.feather")):
            z.write(f, arcname=f"{f.parent.name}/{f.name}")
    return archive
