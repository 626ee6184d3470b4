"""Long-term scene flow: integrate per-pair flow fields into trajectories; accumulate sweeps.

Conventions (the same as the data: AV2 flow includes ego motion)
    A *field* for the pair (k, k+1) is a callable ``field(points (M,3)) -> flow (M,3)`` taking
    points in frame k's coordinates and returning their displacement into frame k+1's
    coordinates (``FlowResult.field`` of :func:`priorlab.sceneflow.estimate.estimate_flow`).
    An *estimator* is a callable ``estimator(pc_a, pc_b)`` returning a ``FlowResult``, a field,
    or a flow array for ``pc_a``; :func:`make_estimator` builds one from the estimation core.

    Trajectories ``traj`` have shape (T, N, 3); ``traj[k]`` is in frame k's own coordinates
    (what :class:`~priorlab.sceneflow.synthetic.SyntheticSequence` stores as ground truth), unless
    ``reference=True`` asks for everything in frame 0's coordinates (needs poses).

    Poses are (T,4,4) frame->world (or frame->frame 0, e.g. KITTI-style ``T_0<-k``); only the
    relative ``inv(P_0) @ P_k`` is used. When poses are given, clouds are first ego-compensated
    into frame 0's coordinates and the fields/estimator work there (residual, object-only
    motion), which makes the flow problem much easier for NSFP.

Example::

    from priorlab.sceneflow.synthetic import synthetic_sequence
    from priorlab.sceneflow.trajectory import (make_estimator, integrate_trajectories,
                                               trajectory_endpoint_error)
    seq = synthetic_sequence(4, seed=0)
    est = make_estimator("nsfp", points=4096, max_iters=300, remove_ground=True)
    traj = integrate_trajectories(seq.clouds, est, poses=seq.poses)
    print(trajectory_endpoint_error(traj, seq.trajectories))   # mean L2 per frame, (T,)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from priorlab.errors import PriorlabError
from priorlab.progress import progress as _progress

__all__ = [
    "as_clouds",
    "as_poses",
    "transform",
    "FittedField",
    "field_from_result",
    "make_estimator",
    "fit_mask",
    "integrate_trajectories",
    "invert_field",
    "accumulate",
    "trajectory_endpoint_error",
    "to_reference",
    "to_own",
]


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def as_clouds(frames) -> list[np.ndarray]:
    """A list of (N_k,3) float32 arrays from a SyntheticSequence, Frames, arrays or file paths."""
    if hasattr(frames, "frames") and not isinstance(frames, (list, tuple)):
        frames = frames.frames
    out = []
    for k, f in enumerate(frames):
        if isinstance(f, (str, Path)):
            from priorlab.sceneflow.io import load_points

            f = load_points(f)
        elif hasattr(f, "points"):
            f = f.points
        a = np.asarray(f, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] < 3:
            raise PriorlabError(f"frame {k} has shape {a.shape}; expected an (N,3) array of xyz points")
        if len(a) == 0:
            raise PriorlabError(f"frame {k} is an empty cloud; drop it or check the file")
        out.append(np.ascontiguousarray(a[:, :3]))
    if len(out) < 2:
        raise PriorlabError(f"need at least 2 frames, got {len(out)}")
    return out


def as_poses(poses, n: int) -> np.ndarray:
    """(n,4,4) relative poses ``T_0<-k = inv(P_0) @ P_k`` from (n,4,4), (n,3,4) or (n,12) input."""
    P = np.asarray(poses, dtype=np.float64)
    if P.ndim == 2 and P.shape[1] == 12:
        P = P.reshape(-1, 3, 4)
    if P.ndim != 3 or P.shape[1:] not in ((4, 4), (3, 4)):
        raise PriorlabError(
            f"poses have shape {P.shape}; expected (T,4,4), (T,3,4) or (T,12) frame->world matrices"
        )
    if P.shape[1] == 3:
        P = np.concatenate([P, np.broadcast_to([[[0, 0, 0, 1.0]]], (len(P), 1, 4))], 1)
    if len(P) != n:
        raise PriorlabError(f"got {len(P)} poses for {n} frames; give exactly one pose per frame")
    if not np.isfinite(P).all():
        raise PriorlabError("poses contain NaN or inf; check the pose file")
    _check_rigid(P)
    return np.linalg.inv(P[0]) @ P


_RIGID_TOL = 1e-3  # poses stored with ~6 significant digits are orthonormal to ~1e-6


def _check_rigid(P: np.ndarray) -> None:
    """Every pose must be rigid: rotation block orthonormal with det +1, bottom row 0 0 0 1."""
    for k, T in enumerate(P):
        if np.abs(T[3] - [0, 0, 0, 1]).max() > _RIGID_TOL:
            raise PriorlabError(
                f"pose {k} has bottom row {T[3].tolist()}, not [0, 0, 0, 1]; give rigid "
                f"frame->world transforms"
            )
        R = T[:3, :3]
        err = float(np.abs(R.T @ R - np.eye(3)).max())
        if err > _RIGID_TOL:
            why = "singular" if abs(np.linalg.det(R)) < 1e-9 else "scaled or sheared"
            raise PriorlabError(
                f"pose {k} is not rigid: its rotation block is {why} (max |R^T R - I| = "
                f"{err:.3g}, tolerance {_RIGID_TOL:g}); give rotation + translation poses "
                f"(orthonormal R)"
            )
        if np.linalg.det(R) < 0:
            raise PriorlabError(
                f"pose {k} is a reflection (det R = -1), not a rotation; check the axis "
                f"convention of the pose file"
            )


def transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to (N,3) points (float32 out)."""
    p = np.asarray(points, dtype=np.float64)
    return (p @ T[:3, :3].T + T[:3, 3]).astype(np.float32)


def _xyz(points) -> np.ndarray:
    """xyz columns as float, keeping float64 (map coordinates lose centimetres in float32)."""
    arr = np.asarray(points)
    return np.ascontiguousarray(arr[:, :3], dtype=np.float64 if arr.dtype == np.float64 else np.float32)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# fields
# --------------------------------------------------------------------------------------------


class FittedField:
    """A flow field usable at any point: ``field(points (M,3)) -> (M,3)`` float32.

    Wraps ``FlowResult.field`` when the method has one; otherwise (``method="free"``, or a plain
    flow array) interpolates the fitted per-point flow from the ``k`` nearest fitted points
    (inverse-distance weights). ``result`` keeps the FlowResult (or None)."""

    def __init__(self, fn=None, *, anchors=None, flow=None, k: int = 3, result=None, chunk: int = 65536):
        self.fn, self.result, self.k, self.chunk = fn, result, int(k), int(chunk)
        self._tree = None
        if fn is None:
            from scipy.spatial import cKDTree

            anchors = np.asarray(anchors, dtype=np.float64)
            flow = _as_numpy(flow)
            if anchors is None or len(anchors) != len(flow) or len(flow) == 0:
                raise PriorlabError(
                    "a flow array needs its points: give the cloud it was estimated for (same length)"
                )
            self._tree, self._flow = cKDTree(anchors), flow

    def __call__(self, points) -> np.ndarray:
        p = _xyz(points)
        if len(p) == 0:
            return np.zeros((0, 3), np.float32)
        if self.fn is not None:
            return np.concatenate(
                [_as_numpy(self.fn(p[i : i + self.chunk])) for i in range(0, len(p), self.chunk)]
            )
        k = min(self.k, len(self._flow))
        d, idx = self._tree.query(p, k=k)
        if k == 1:
            return self._flow[idx]
        w = 1.0 / np.maximum(d, 1e-6)
        w /= w.sum(1, keepdims=True)
        return (self._flow[idx] * w[..., None]).sum(1).astype(np.float32)


def field_from_result(result, points=None, *, k: int = 3) -> FittedField:
    """A :class:`FittedField` from a FlowResult (uses ``.field``, else its per-point ``.flow`` on
    ``points``), a callable field, or an (N,3) flow array for ``points``."""
    if isinstance(result, FittedField):
        return result
    if hasattr(result, "flow") and not isinstance(result, np.ndarray):
        fn = getattr(result, "field", None)
        if fn is not None:
            return FittedField(fn, result=result)
        if points is None:
            raise PriorlabError(
                "this FlowResult has no field (method 'free'); pass the points it was estimated on"
            )
        return FittedField(anchors=points, flow=result.flow, k=k, result=result)
    if callable(result):
        return FittedField(result)
    if points is None:
        raise PriorlabError("a flow array needs the points it was estimated on")
    return FittedField(anchors=points, flow=result, k=k)


def make_estimator(
    method: str = "rigid",
    *,
    points: int | None = None,
    seed: int = 0,
    max_iters: int | None = None,
    max_range: float | None = None,
    remove_ground: bool = False,
    ground_threshold: float = 0.3,
    progress: bool = True,
    device: str = "cpu",
    results: list | None = None,
    **options,
) -> Callable[[np.ndarray, np.ndarray], FittedField]:
    """An ``estimator(pc_a, pc_b) -> FittedField`` around :func:`estimate_flow`.

    The flow is *fitted* on the filtered clouds (``max_range`` crop, ground removed with
    ``remove_ground``, ``points`` subsample) but the returned field is valid at every point,
    filtered-out ones included (NSFP/Fast-NSF evaluate their MLP there; ``free`` interpolates
    from the nearest fitted points). Each FlowResult is appended to ``results`` if given."""
    from priorlab.sceneflow.estimate import estimate_flow

    def estimator(pc_a, pc_b) -> FittedField:
        a, b = _xyz(pc_a), _xyz(pc_b)
        if method == "rigid":  # uses every point and removes the ground itself
            res = estimate_flow(a, b, method="rigid", seed=seed, **options)
            if results is not None:
                results.append(res)
            return field_from_result(res, a)
        ma, mb = (
            fit_mask(a, max_range, remove_ground, ground_threshold),
            fit_mask(b, max_range, remove_ground, ground_threshold),
        )
        if ma.sum() < 3 or mb.sum() < 3:
            raise PriorlabError(
                f"only {int(ma.sum())}/{int(mb.sum())} points left after range crop / ground removal; "
                "loosen --max-range or drop --remove-ground"
            )
        res = estimate_flow(
            a[ma],
            b[mb],
            method=method,
            points=points,
            seed=seed,
            max_iters=max_iters,
            progress=progress,
            device=device,
            **options,
        )
        if results is not None:
            results.append(res)
        return field_from_result(res, a[ma])

    estimator.method = method
    return estimator


def fit_mask(
    p, max_range: float | None = None, remove_ground: bool = False, threshold: float = 0.3
) -> np.ndarray:
    """Points a fit uses: within ``max_range`` m (3-D) and, with ``remove_ground``, off the RANSAC
    ground plane (``threshold`` m)."""
    m = np.ones(len(p), bool)
    if max_range is not None:
        from priorlab.sceneflow.preprocess import crop_range

        m &= np.asarray(crop_range(p, max_range), bool)
    if remove_ground:
        from priorlab.sceneflow.preprocess import remove_ground_plane

        m &= np.asarray(remove_ground_plane(p, threshold=threshold), bool)
    return m


def _fields(fields, clouds, *, backward=False, quiet=None, desc="estimating flow"):
    """Resolve a list of fields or an estimator into T-1 FittedFields (forward: k->k+1 for
    k=0..T-2; backward: k+1->k)."""
    n = len(clouds) - 1
    if callable(fields) and not isinstance(fields, (list, tuple)):
        out = []
        for k in _progress(range(n), total=n, desc=desc, disable=quiet):
            a, b = (clouds[k + 1], clouds[k]) if backward else (clouds[k], clouds[k + 1])
            out.append(field_from_result(fields(a, b), a))
        return out
    fields = list(fields)
    if len(fields) != n:
        raise PriorlabError(
            f"got {len(fields)} flow fields for {len(clouds)} frames; need one per consecutive pair ({n})"
        )
    return [field_from_result(f, clouds[k + 1] if backward else clouds[k]) for k, f in enumerate(fields)]


# --------------------------------------------------------------------------------------------
# integration
# --------------------------------------------------------------------------------------------


def integrate_trajectories(
    frames,
    fields,
    *,
    start: np.ndarray | None = None,
    poses=None,
    reference: bool = False,
    return_fields: bool = False,
    progress: bool = True,
):
    """Move ``start`` (default: frame 0's points) through the sequence.

    ``fields``: a list of T-1 forward fields (pair k -> k+1) or an estimator ``(pc_a, pc_b)``;
    each step queries pair k's field at the already-moved points: ``x_{k+1} = x_k + f_k(x_k)``.
    Returns (T, N, 3) float32 with ``traj[k]`` in frame k's coordinates, or in frame 0's with
    ``reference=True`` (needs ``poses``). With ``poses``, clouds are ego-compensated into
    frame 0 first and the fields are understood to work there. ``return_fields=True`` also
    returns the list of fields used."""
    clouds = as_clouds(frames)
    T = len(clouds)
    rel = as_poses(poses, T) if poses is not None else None
    if reference and rel is None:
        raise PriorlabError("reference=True needs poses (frame->world, one per frame)")
    work = [transform(c, rel[k]) for k, c in enumerate(clouds)] if rel is not None else clouds
    x = clouds[0] if start is None else np.asarray(start, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 3:
        raise PriorlabError(f"start points have shape {x.shape}; expected (N,3)")
    quiet = None if progress else True
    fl = _fields(fields, work, quiet=quiet)
    x = x.astype(np.float32).copy()
    traj = [x]
    for f in fl:
        x = x + f(x)
        traj.append(x)
    traj = np.stack(traj).astype(np.float32)
    if rel is not None and not reference:
        traj = to_own(traj, rel)
    return (traj, fl) if return_fields else traj


def to_reference(traj: np.ndarray, poses) -> np.ndarray:
    """Trajectories in each frame's own coordinates -> all in frame 0's (needs poses)."""
    rel = as_poses(poses, len(traj))
    return np.stack([transform(t, rel[k]) for k, t in enumerate(traj)])


def to_own(traj: np.ndarray, poses) -> np.ndarray:
    """Trajectories in frame 0's coordinates -> each in its own frame's."""
    rel = as_poses(poses, len(traj))
    return np.stack([transform(t, np.linalg.inv(rel[k])) for k, t in enumerate(traj)])


def invert_field(field, points: np.ndarray, *, iters: int = 20, tol: float = 1e-4) -> np.ndarray:
    """For points ``y`` of frame k+1, solve ``x + field(x) = y`` by fixed-point iteration
    ``x <- y - field(x)`` (converges when the field varies slowly, as NSFP fields do; the rigid
    ego part has Lipschitz constant 2 sin(yaw/2) << 1). Returns x (frame k coordinates)."""
    y = np.asarray(points, dtype=np.float32)
    x = y - field(y)
    for _ in range(int(iters)):
        nx = y - field(x)
        done = np.abs(nx - x).max() < tol if len(x) else True
        x = nx
        if done:
            break
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------
# accumulation
# --------------------------------------------------------------------------------------------


def accumulate(
    frames,
    fields=None,
    *,
    poses=None,
    backward_fields=None,
    rigid=None,
    inverse_iters: int = 20,
    progress: bool = True,
) -> np.ndarray:
    """Bring every sweep into frame 0's coordinates and stack them: (M,4) float32 with columns
    x, y, z, frame index.

    - ``poses`` only: rigid ego-motion compensation (moving objects smear).
    - ``fields`` = estimator ``(pc_a, pc_b)``: estimates *backward* flow (k -> k-1) for each
      k >= 1 on the (compensated, if ``poses``) clouds and chains it down to frame 0.
    - ``fields`` = list of T-1 forward fields (k -> k+1, e.g. those used for trajectories):
      each is inverted by fixed-point iteration (:func:`invert_field`) and chained.
    - ``backward_fields`` = list of T-1 fields, entry k-1 mapping frame k into frame k-1.
    With poses, all fields are understood to work on the ego-compensated clouds.

    ``rigid``: per-frame boolean masks (list, one per frame) of points known to be static, e.g.
    the ground, which is then aligned with the poses only (needs ``poses``): a field fitted on
    non-ground points extrapolates poorly to the ground plane."""
    clouds = as_clouds(frames)
    T = len(clouds)
    if fields is not None and backward_fields is not None:
        raise PriorlabError("give either fields (forward or an estimator) or backward_fields, not both")
    if fields is None and backward_fields is None and poses is None:
        raise PriorlabError(
            "nothing to align the frames with: give poses and/or flow fields (or an estimator)"
        )
    rel = as_poses(poses, T) if poses is not None else None
    work = [transform(c, rel[k]) for k, c in enumerate(clouds)] if rel is not None else clouds
    if rigid is not None:
        if rel is None:
            raise PriorlabError("rigid masks need poses: static points are aligned with the poses alone")
        rigid = list(rigid)
        if len(rigid) != T:
            raise PriorlabError(f"got {len(rigid)} rigid masks for {T} frames; give one per frame (or None)")
        rigid = [
            np.zeros(len(c), bool) if r is None else np.asarray(r, bool).reshape(-1)
            for r, c in zip(rigid, clouds)
        ]
        for k, (r, c) in enumerate(zip(rigid, clouds)):
            if len(r) != len(c):
                raise PriorlabError(f"rigid mask {k} has {len(r)} entries for {len(c)} points")
    quiet = None if progress else True
    step = None  # step[k-1](x): frame k coords -> frame k-1 coords
    if backward_fields is not None:
        bf = _fields(backward_fields, work, backward=True)
        step = [(lambda x, f=f: x + f(x)) for f in bf]
    elif fields is not None:
        if callable(fields) and not isinstance(fields, (list, tuple)):
            bf = _fields(fields, work, backward=True, quiet=quiet, desc="estimating backward flow")
            step = [(lambda x, f=f: x + f(x)) for f in bf]
        else:
            ff = _fields(fields, work)
            step = [(lambda x, f=f: invert_field(f, x, iters=inverse_iters)) for f in ff]
    out = [np.concatenate([work[0], np.zeros((len(work[0]), 1), np.float32)], 1)]
    for k in range(1, T):
        x = work[k].copy()
        moving = np.ones(len(x), bool) if rigid is None else ~rigid[k]
        if step is not None and moving.any():
            y = x[moving]
            for j in range(k, 0, -1):
                y = step[j - 1](y)
            x[moving] = y
        out.append(np.concatenate([x, np.full((len(x), 1), k, np.float32)], 1))
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


def trajectory_endpoint_error(pred_traj, true_traj, mask=None, *, reduce: str = "mean") -> np.ndarray:
    """L2 distance between predicted and true positions at every frame: (T,) mean (or median)
    over points (``mask`` selects points), or (T,N) with ``reduce="none"``. Entry k is the
    endpoint error of a k-step trajectory (entry 0 is 0 when both start at the same points)."""
    p, t = np.asarray(pred_traj, np.float64), np.asarray(true_traj, np.float64)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 3:
        raise PriorlabError(f"trajectory shapes differ or are not (T,N,3): {p.shape} vs {t.shape}")
    e = np.linalg.norm(p - t, axis=-1)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (p.shape[1],):
            raise PriorlabError(f"mask has shape {mask.shape}; expected ({p.shape[1]},)")
        e = e[:, mask]
    if reduce == "none":
        return e
    if e.shape[1] == 0:
        return np.full(len(e), np.nan)
    if reduce == "mean":
        return e.mean(1)
    if reduce == "median":
        return np.median(e, 1)
    raise PriorlabError(f"reduce must be 'mean', 'median' or 'none', got {reduce!r}")
