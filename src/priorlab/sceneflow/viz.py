"""Bird's-eye-view pictures of scene flow (PNG, matplotlib Agg; no pyplot, no global state).

- :func:`plot_flow_bev`: a pair with flow coloured by direction (hue) and magnitude
  (saturation/brightness), colour-wheel legend, optional arrows.
- :func:`plot_error_map`: per-point end-point error against ground truth, with a colour bar.
- :func:`plot_trajectories`: multi-frame trajectories (predicted, and true when known).
- :func:`plot_accumulated`: accumulated clouds coloured by frame, side by side for comparison.

Every function takes the output ``path``, writes a PNG, and returns the path. Views are cropped
to ``±range_m`` metres around ``center`` (default the sensor); axes are in metres (x forward,
y left). Colours of the flow picture: grey = no motion, colour = direction, vivid = fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from priorlab.errors import PriorlabError

__all__ = ["flow_colors", "plot_flow_bev", "plot_error_map", "plot_trajectories", "plot_accumulated"]

_DPI = 120


def _xyz(a, name, n=None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 3:
        raise PriorlabError(f"{name} has shape {a.shape}; expected (N,3)")
    if n is not None and len(a) != n:
        raise PriorlabError(
            f"{name} has {len(a)} rows but the cloud has {n} points; they must match one to one"
        )
    return a[:, :3]


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise PriorlabError(f"plots are written as PNG; give a path ending in .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI)
    return path


def _bev_axes(ax, range_m, center, title=None):
    cx, cy = center
    ax.set_xlim(cx - range_m, cx + range_m)
    ax.set_ylim(cy - range_m, cy + range_m)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, forward)")
    ax.set_ylabel("y (m, left)")
    ax.grid(True, color="0.85", lw=0.5, zorder=0)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=10)


def _in_view(p, range_m, center):
    return (np.abs(p[:, 0] - center[0]) <= range_m) & (np.abs(p[:, 1] - center[1]) <= range_m)


def _limit(idx, max_points, seed=0):
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    return idx


def _sensor(ax, at=(0.0, 0.0)):
    ax.plot([at[0]], [at[1]], marker="^", ms=8, mfc="black", mec="white", zorder=6, ls="none", label="sensor")


def flow_colors(flow: np.ndarray, scale: float) -> np.ndarray:
    """RGB (N,3) for flow vectors: hue = direction in the xy plane, saturation and brightness
    grow with |flow| / ``scale`` (0 -> mid grey, >= scale -> fully saturated colour)."""
    f = np.asarray(flow, dtype=np.float64)
    ang = np.arctan2(f[:, 1], f[:, 0])
    m = np.clip(np.linalg.norm(f[:, :2], axis=1) / max(scale, 1e-9), 0, 1)
    hsv = np.stack([(ang / (2 * np.pi)) % 1.0, m, 0.55 + 0.4 * m], -1)
    return mcolors.hsv_to_rgb(hsv)


def _colour_wheel(fig, ax, scale, unit="m"):
    ins = ax.inset_axes([0.74, 0.74, 0.24, 0.24])
    n = 201
    u = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(u, u)
    R = np.hypot(X, Y)
    rgb = flow_colors(np.stack([X.ravel(), Y.ravel()], -1) * scale, scale).reshape(n, n, 3)
    rgba = np.concatenate([rgb, (R <= 1)[..., None].astype(float)], -1)
    ins.imshow(rgba, origin="lower", extent=(-1, 1, -1, 1))
    ins.set_xlim(-1.45, 1.45)
    ins.set_ylim(-1.45, 1.45)
    ins.set_xticks([])
    ins.set_yticks([])
    ins.patch.set_alpha(0.85)
    for s in ins.spines.values():
        s.set_visible(False)
    ins.text(1.2, 0, "+x", ha="center", va="center", fontsize=7)
    ins.text(0, 1.25, "+y", ha="center", va="center", fontsize=7)
    ins.text(0, -1.3, f"rim = {scale:.2g} {unit}", ha="center", va="center", fontsize=7)


def plot_flow_bev(
    pc0,
    flow,
    path,
    *,
    pc1=None,
    ego_motion=None,
    mask=None,
    range_m: float = 40.0,
    center=(0.0, 0.0),
    scale: float | None = None,
    max_arrows: int = 250,
    min_arrow: float = 0.1,
    max_points: int = 150_000,
    title: str | None = None,
    point_size: float = 1.5,
    label: str | None = None,
) -> Path:
    """BEV of ``pc0`` coloured by ``flow``; grey dots = ``pc1`` if given.

    With ``ego_motion`` (4x4, frame 0 -> frame 1, e.g. the AV2 pair's), the rigid ego flow is
    subtracted so colours and arrows show how things move in the world; otherwise the total
    flow (ego motion included) is shown. ``mask`` picks the points to colour (e.g. the non-ground
    points the flow was fitted on); the others are drawn pale grey, without arrows. ``scale`` (m)
    is the magnitude at full saturation
    (default: 98th percentile). Up to ``max_arrows`` arrows (exaggerated by the factor shown in
    the legend) are drawn on points moving more than ``min_arrow`` m. ``label`` replaces the
    automatic description of what the flow is (e.g. "residual flow after ICP")."""
    p = _xyz(pc0, "pc0")
    f = _xyz(flow, "flow", len(p))
    what = "total flow (incl. ego motion)"
    if ego_motion is not None:
        E = np.asarray(ego_motion, dtype=np.float64).reshape(4, 4)
        f = f - (p @ E[:3, :3].T + E[:3, 3] - p)
        what = "flow relative to the world (ego motion removed)"
    if label:
        what = label
    finite = np.isfinite(f).all(1)
    sel = np.ones(len(p), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    if sel.shape != (len(p),):
        raise PriorlabError(f"mask has {sel.size} entries for {len(p)} points; give one per point")
    inview = _in_view(p, range_m, center)
    view = inview & finite & sel
    mag = np.linalg.norm(f[:, :2], axis=1)
    if scale is None:
        scale = float(np.percentile(mag[view], 98)) if view.any() else 1.0
        scale = max(scale, 0.05)
    fig = Figure(figsize=(8.2, 8), layout="constrained")
    ax = fig.add_subplot(111)
    if pc1 is not None:
        q = _xyz(pc1, "pc1")
        qi = _limit(np.flatnonzero(_in_view(q, range_m, center)), max_points, 1)
        ax.scatter(
            q[qi, 0], q[qi, 1], s=point_size * 0.5, c="0.75", lw=0, rasterized=True, zorder=1, label="pc1"
        )
    if mask is not None:
        oi = _limit(np.flatnonzero(inview & ~sel), max_points, 3)
        ax.scatter(p[oi, 0], p[oi, 1], s=point_size * 0.5, c="0.88", lw=0, rasterized=True, zorder=1)
    idx = _limit(np.flatnonzero(view), max_points)
    idx = idx[np.argsort(mag[idx])]  # moving points on top
    sizes = point_size * (1 + 2 * np.clip(mag[idx] / scale, 0, 1))  # moving points drawn bigger
    ax.scatter(p[idx, 0], p[idx, 1], s=sizes, c=flow_colors(f[idx], scale), lw=0, rasterized=True, zorder=2)
    cand = np.flatnonzero(view & (mag >= min_arrow))
    gain = None
    if len(cand) and max_arrows > 0:
        cand = _limit(_spread(p[cand], cand, cell=2.0), max_arrows, 2)
        gain = max(1.0, round(0.06 * range_m / max(mag[cand].max(), 1e-6)))
        ax.quiver(
            p[cand, 0],
            p[cand, 1],
            f[cand, 0],
            f[cand, 1],
            angles="xy",
            scale_units="xy",
            scale=1.0 / gain,
            width=0.0022,
            headwidth=4,
            color="black",
            alpha=0.75,
            zorder=3,
        )
    _sensor(ax, (0.0, 0.0))
    _bev_axes(ax, range_m, center)
    moving = int((mag[view] >= min_arrow).sum())
    sub = f"{what}\n{moving} of {int(view.sum())} points in view move >= {min_arrow:g} m"
    if mask is not None:
        sub += " (pale grey: not shown)"
    if gain:
        sub += f"; arrows x{gain:g}"
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    _colour_wheel(fig, ax, scale)
    return _save(fig, path)


def _spread(p, idx, cell):
    """One representative per ``cell`` x ``cell`` m BEV cell (so arrows don't pile up)."""
    key = np.floor(p[:, :2] / cell).astype(np.int64)
    _, first = np.unique(key, axis=0, return_index=True)
    return idx[np.sort(first)]


def plot_error_map(
    pc0,
    pred,
    gt,
    path,
    *,
    mask=None,
    range_m: float = 40.0,
    center=(0.0, 0.0),
    vmax: float = 0.3,
    max_points: int = 150_000,
    title: str | None = None,
    point_size: float = 2.0,
) -> Path:
    """BEV of per-point end-point error |pred - gt| (m), colour bar clipped at ``vmax`` (default
    0.3 m, the outlier threshold). ``mask`` picks the evaluated points; others are drawn light
    grey. The title gives mean EPE over the evaluated points."""
    p = _xyz(pc0, "pc0")
    e = np.linalg.norm(_xyz(pred, "predicted flow", len(p)) - _xyz(gt, "ground-truth flow", len(p)), axis=1)
    m = np.ones(len(p), bool) if mask is None else np.asarray(mask, bool)
    if m.shape != (len(p),):
        raise PriorlabError(f"mask has shape {m.shape}; expected ({len(p)},)")
    m &= np.isfinite(e)
    view = _in_view(p, range_m, center)
    fig = Figure(figsize=(8.6, 8), layout="constrained")
    ax = fig.add_subplot(111)
    other = _limit(np.flatnonzero(view & ~m), max_points, 1)
    ax.scatter(p[other, 0], p[other, 1], s=point_size * 0.5, c="0.85", lw=0, rasterized=True, zorder=1)
    idx = _limit(np.flatnonzero(view & m), max_points)
    idx = idx[np.argsort(e[idx])]
    sc = ax.scatter(
        p[idx, 0],
        p[idx, 1],
        s=point_size,
        c=np.minimum(e[idx], vmax),
        cmap="plasma",
        vmin=0,
        vmax=vmax,
        lw=0,
        rasterized=True,
        zorder=2,
    )
    cb = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.03, extend="max")
    cb.set_label("end-point error (m)")
    _sensor(ax)
    _bev_axes(ax, range_m, center)
    epe = float(e[m].mean()) if m.any() else float("nan")
    out = float((e[m] > vmax).mean() * 100) if m.any() else float("nan")
    sub = f"per-point EPE: mean {epe:.3f} m over {int(m.sum())} points, {out:.1f} % above {vmax:g} m"
    if mask is not None:
        sub += "; grey = not evaluated"
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    return _save(fig, path)


def plot_trajectories(
    traj,
    path,
    *,
    true_traj=None,
    background=None,
    range_m: float = 40.0,
    center=(0.0, 0.0),
    max_tracks: int = 400,
    min_motion: float = 0.3,
    title: str | None = None,
    seed: int = 0,
) -> Path:
    """BEV of trajectories (T,N,3), all in one coordinate frame (use
    :func:`~priorlab.sceneflow.trajectory.to_reference` first when they are in each frame's own
    coordinates). Draws up to ``max_tracks`` tracks, preferring points that move more than
    ``min_motion`` m in total (one per 1 m cell, so objects are not drawn 1000 times), coloured by
    time; ``true_traj`` (same shape) dashed black; ``background`` (e.g. frame 0's cloud) grey."""
    tr = np.asarray(traj, dtype=np.float64)
    if tr.ndim != 3 or tr.shape[-1] != 3 or len(tr) < 2:
        raise PriorlabError(f"trajectories have shape {tr.shape}; expected (T,N,3) with T >= 2")
    gt = None
    if true_traj is not None:
        gt = np.asarray(true_traj, dtype=np.float64)
        if gt.shape != tr.shape:
            raise PriorlabError(
                f"true trajectories have shape {gt.shape}, predicted {tr.shape}; they must match"
            )
    T = len(tr)
    ref = gt if gt is not None else tr
    motion = np.linalg.norm(ref[-1, :, :2] - ref[0, :, :2], axis=1)
    view = _in_view(tr[0], range_m, center) & np.isfinite(tr).all((0, 2))
    moving = np.flatnonzero(view & (motion >= min_motion))
    moving = _spread(tr[0, moving], moving, cell=1.0)
    chosen = _limit(moving, max_tracks, seed)
    fig = Figure(figsize=(8.6, 8), layout="constrained")
    ax = fig.add_subplot(111)
    if background is not None:
        b = _xyz(background, "background")
        bi = _limit(np.flatnonzero(_in_view(b, range_m, center)), 150_000, 1)
        ax.scatter(b[bi, 0], b[bi, 1], s=0.6, c="0.78", lw=0, rasterized=True, zorder=1)
    if gt is not None and len(chosen):
        ax.add_collection(
            LineCollection(
                gt[:, chosen, :2].transpose(1, 0, 2),
                colors="black",
                linewidths=0.9,
                linestyles=(0, (2, 1.5)),
                zorder=6,
                label="true",
            )
        )
    if len(chosen):
        segs = np.stack([tr[:-1, chosen, :2], tr[1:, chosen, :2]], 2)  # (T-1, K, 2, 2)
        tcol = np.repeat(np.arange(T - 1), len(chosen))
        lc = LineCollection(segs.reshape(-1, 2, 2), cmap="viridis", linewidths=2.2, zorder=4)
        lc.set_array(tcol + 0.5)
        lc.set_clim(0, T - 1)
        ax.add_collection(lc)
        ax.scatter(
            tr[0, chosen, 0], tr[0, chosen, 1], s=6, c="black", zorder=5, lw=0, label="start (frame 0)"
        )
        cb = fig.colorbar(lc, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label("frame step (k -> k+1)")
        cb.set_ticks(np.arange(T - 1) + 0.5)
        cb.set_ticklabels([f"{k}->{k + 1}" for k in range(T - 1)])
    _bev_axes(ax, range_m, center)
    sub = f"{len(chosen)} tracks over {T} frames (points moving >= {min_motion:g} m"
    sub += ", dashed = truth)" if gt is not None else ")"
    if gt is not None and len(chosen):
        e = np.linalg.norm(tr[-1, chosen] - gt[-1, chosen], axis=1)
        sub += f"; endpoint error of drawn tracks: mean {e.mean():.2f} m"
    ax.set_title((title + "\n" if title else "") + sub, fontsize=9)
    if len(chosen):
        ax.legend(loc="lower right", fontsize=8, markerscale=2)
    return _save(fig, path)


def plot_accumulated(
    clouds,
    path,
    *,
    titles=None,
    masks=None,
    range_m: float = 40.0,
    center=(0.0, 0.0),
    max_points: int = 200_000,
    title: str | None = None,
    point_size: float = 0.8,
) -> Path:
    """Accumulated cloud(s) coloured by frame index. ``clouds``: one (M,4) array (x, y, z,
    frame) as returned by :func:`~priorlab.sceneflow.trajectory.accumulate`, or a list of them
    drawn side by side (e.g. rigid-only vs flow-compensated) with ``titles``. ``masks`` (one
    boolean array per cloud, or one shared by all) selects the points drawn, e.g. non-ground
    points, whose many overlapping rings otherwise hide the structure."""
    if isinstance(clouds, np.ndarray):
        clouds = [clouds]
    clouds = [np.asarray(c, dtype=np.float64) for c in clouds]
    for c in clouds:
        if c.ndim != 2 or c.shape[1] != 4:
            raise PriorlabError(
                f"accumulated cloud has shape {c.shape}; expected (M,4) = x, y, z, frame index"
            )
    if masks is not None:
        masks = [masks] * len(clouds) if isinstance(masks, np.ndarray) else list(masks)
        if len(masks) != len(clouds):
            raise PriorlabError(f"got {len(masks)} masks for {len(clouds)} clouds")
        for m, c in zip(masks, clouds):
            if np.asarray(m).shape != (len(c),):
                raise PriorlabError(
                    f"mask has shape {np.asarray(m).shape}; expected ({len(c)},), one entry per point"
                )
        clouds = [c[np.asarray(m, bool)] for c, m in zip(clouds, masks)]
    titles = list(titles) if titles is not None else [None] * len(clouds)
    if len(titles) != len(clouds):
        raise PriorlabError(f"got {len(titles)} titles for {len(clouds)} clouds")
    n_frames = int(max(c[:, 3].max() for c in clouds if len(c))) + 1 if any(len(c) for c in clouds) else 1
    cmap = mcolors.ListedColormap(_frame_palette(n_frames))
    norm = mcolors.BoundaryNorm(np.arange(n_frames + 1) - 0.5, n_frames)
    k = len(clouds)
    fig = Figure(figsize=(7.2 * k + 1.2, 7.6), layout="constrained")
    axes = [fig.add_subplot(1, k, i + 1) for i in range(k)]
    sc = None
    for ax, c, t in zip(axes, clouds, titles):
        idx = _limit(np.flatnonzero(_in_view(c, range_m, center)), max_points)
        idx = np.random.default_rng(0).permutation(idx)  # no frame hides the others systematically
        sc = ax.scatter(
            c[idx, 0], c[idx, 1], s=point_size, c=c[idx, 3], cmap=cmap, norm=norm, lw=0, rasterized=True
        )
        _bev_axes(ax, range_m, center, t)
    if title:
        fig.suptitle(title, fontsize=11)
    if sc is not None:
        cb = fig.colorbar(
            sc, ax=axes, fraction=0.04 if k == 1 else 0.025, pad=0.01, ticks=np.arange(n_frames)
        )
        cb.set_label("frame index")
    return _save(fig, path)


def _frame_palette(n):
    from matplotlib import colormaps

    base = colormaps["tab10"].colors if n <= 10 else colormaps["turbo"](np.linspace(0.05, 0.95, n))
    return [base[i % len(base)] for i in range(n)]
