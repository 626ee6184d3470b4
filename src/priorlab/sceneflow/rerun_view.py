"""3-D recordings of scene flow for the rerun viewer (``--rrd FILE`` on ``flow estimate`` / ``flow run``).

The recording is saved to a file, never streamed: open it with ``rerun FILE.rrd`` (rerun-sdk,
``pip install 'priorlab[viewer]'``). One time step per pair on the ``frame`` timeline, entities:

* ``world/pc1``, ``world/pc2`` -- both clouds as given (pc2 in its own frame: ``pc1 + flow`` lands
  on it, so the arrows end on pc2);
* ``world/flow`` -- arrows from pc1 points, coloured by speed: ``|flow - ego flow|`` (motion over
  the ground, m per sweep) when the ego motion is known, else ``|flow|``; at most
  :data:`MAX_ARROWS` evenly spaced points;
* ``world/gt_flow`` and ``world/error`` (pc1 coloured by end-point error, m) with ground truth;
* ``world/clusters`` -- pc1 points coloured by cluster (method ``rigid``; ground/noise left out);
* ``stats/epe`` -- mean end-point error per frame, with ground truth.

:func:`recording_entities` reads a file back (``rerun.chunk.RrdReader``) for tests and checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from priorlab.errors import PriorlabError

__all__ = ["MAX_ARROWS", "FlowRecording", "write_pair_rrd", "recording_entities"]

MAX_ARROWS = 30_000  # more arrows than this make the viewer sluggish and add nothing visible
SPEED_RANGE_M = 2.0  # the colour scale saturates at this speed (m per sweep; 20 m/s at 10 Hz)


def _rerun():
    try:
        import rerun as rr
    except ImportError:
        raise PriorlabError("--rrd needs the rerun SDK: pip install 'priorlab[viewer]'") from None
    return rr


def _colours(values: np.ndarray, top: float) -> np.ndarray:
    from matplotlib import colormaps

    x = np.clip(np.asarray(values, np.float64) / max(top, 1e-9), 0.0, 1.0)
    return (colormaps["turbo"](x)[:, :3] * 255).astype(np.uint8)


def _every(n: int, cap: int) -> np.ndarray:
    return np.arange(n) if n <= cap else np.linspace(0, n - 1, cap).astype(np.int64)


class FlowRecording:
    """A rerun recording written to ``path`` (atomically: a temp file, renamed on :meth:`close`)."""

    def __init__(self, path, name: str = "priorlab flow"):
        rr = _rerun()
        self.rr = rr
        self.path = Path(path)
        if self.path.suffix.lower() != ".rrd":
            raise PriorlabError(f"--rrd {str(self.path)!r} must end in .rrd")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}.rrd")
        self.rec = rr.RecordingStream("priorlab_flow", recording_id=name)
        self.rec.save(self.tmp)
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)

    def add(self, k: int, pc1, pc2, flow, *, gt=None, eval_mask=None, labels=None, ego_motion=None,
            name: str | None = None) -> None:
        """Log pair ``k`` (frame k -> k+1)."""
        rr, rec = self.rr, self.rec
        p1 = np.asarray(pc1, np.float64)[:, :3]
        p2 = np.asarray(pc2, np.float64)[:, :3]
        f = np.asarray(flow, np.float64)
        if f.shape != p1.shape:
            raise PriorlabError(f"flow has shape {f.shape} for {len(p1)} pc1 points")
        rec.set_time("frame", sequence=int(k))
        if name is not None:
            rec.log("frame_name", rr.TextDocument(str(name)))
        rec.log("world/pc1", rr.Points3D(p1, colors=[90, 140, 255], radii=0.03))
        rec.log("world/pc2", rr.Points3D(p2, colors=[255, 160, 60], radii=0.03))
        speed = f
        if ego_motion is not None:
            T = np.asarray(ego_motion, np.float64)
            speed = f - (p1 @ T[:3, :3].T + T[:3, 3] - p1)
        idx = _every(len(p1), MAX_ARROWS)
        rec.log("world/flow", rr.Arrows3D(origins=p1[idx], vectors=f[idx],
                                          colors=_colours(np.linalg.norm(speed[idx], axis=1),
                                                          SPEED_RANGE_M)))
        if labels is not None:
            lab = np.asarray(labels).reshape(-1)
            keep = lab >= 0
            rec.log("world/clusters", rr.Points3D(p1[keep], class_ids=lab[keep].astype(np.uint16),
                                                  radii=0.04))
        if gt is not None:
            g = np.asarray(gt, np.float64)
            if g.shape != p1.shape:
                raise PriorlabError(f"ground truth has shape {g.shape} for {len(p1)} pc1 points")
            m = np.isfinite(g).all(1)
            if eval_mask is not None:
                m &= np.asarray(eval_mask, bool).reshape(-1)
            err = np.linalg.norm(f - np.where(np.isfinite(g), g, 0.0), axis=1)
            gi = idx[m[idx]]
            rec.log("world/gt_flow", rr.Arrows3D(origins=p1[gi], vectors=g[gi], colors=[40, 200, 80]))
            rec.log("world/error", rr.Points3D(p1[m], colors=_colours(err[m], 0.5), radii=0.05))
            if m.any():
                rec.log("stats/epe", rr.Scalars(float(err[m].mean())))

    def close(self) -> Path:
        self.rec.flush()
        self.rec.disconnect()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.rec.disconnect()
        finally:
            self.tmp.unlink(missing_ok=True)


def write_pair_rrd(path, pc1, pc2, flow, **extra) -> Path:
    """One pair's recording (``flow estimate --rrd``); ``extra`` as in :meth:`FlowRecording.add`."""
    rec = FlowRecording(path, name=Path(path).stem)
    try:
        rec.add(0, pc1, pc2, flow, **extra)
    except BaseException:
        rec.abort()
        raise
    return rec.close()


def recording_entities(path) -> dict[str, int]:
    """Entity path -> number of logged rows in a saved recording (reads it back with rerun)."""
    _rerun()
    from rerun.chunk import RrdReader

    counts: dict[str, int] = {}
    for chunk in RrdReader(str(path)).stream().to_chunks():
        if not chunk.entity_path.startswith("/__"):
            counts[chunk.entity_path] = counts.get(chunk.entity_path, 0) + chunk.num_rows
    return counts
