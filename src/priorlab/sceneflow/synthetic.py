"""Synthetic spinning lidar with exact scene-flow ground truth.

The embedded default for demos and CI: no download, seeded, a 32-beam x ~1000-azimuth frame
(~30k points) in about 0.1 s on one CPU core (numpy, analytic ray casting).

World model
    A flat ground plane (world z = 0) and a set of *structures*: oriented boxes (cars, buildings)
    and vertical cylinders (pedestrians, poles), each moving in the plane with a constant speed
    along its heading and a constant yaw rate (constant-turn-rate-and-velocity, integrated
    exactly). The ego vehicle moves the same way (``ego_speed``, ``ego_yaw_rate``). Nothing
    pitches or rolls, so the true flow has no z component.

Coordinates
    Every frame's points are in that frame's **sensor frame** (KITTI convention: origin at the
    lidar, x forward, y left, z up, ground at ``z = -sensor_height``). ``Frame.pose`` is the 4x4
    sensor->world transform.

Ground truth (AV2 convention, flow includes ego motion)
    ``flow = (position of the same surface point at t+1, in frame t+1's sensor frame)
    - (its position in frame t's sensor frame)``. A measured point, range noise included, is
    rigidly attached to the surface it hit. For static points ``flow = ego_motion @ p - p`` with
    ``ego_motion = inv(pose1) @ pose0`` (AV2's ``ego1_SE3_ego0``).

Labels
    ``object_id``: 0 for ground and static background (buildings, poles), k >= 1 for the k-th
    traffic participant (cars and pedestrians, parked ones included). ``classes``: AV2 category
    codes (0 background, 17 PEDESTRIAN, 19 REGULAR_VEHICLE), so :func:`threeway_epe` buckets
    foreground-dynamic / foreground-static (parked cars, standing people) / background.
    ``dynamic``: ``|flow - ego_flow| >= 0.05 m``, as in AV2.

Example::

    from priorlab.sceneflow.synthetic import synthetic_pair, synthetic_sequence
    pair = synthetic_pair(seed=0)            # dict(pc0, pc1, flow, classes, dynamic, ego_motion, ...)
    seq = synthetic_sequence(5, seed=0)      # frames, poses, true trajectories of frame 0's points
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from priorlab.errors import PriorlabError

__all__ = [
    "Lidar",
    "Structure",
    "Scene",
    "Frame",
    "SyntheticSequence",
    "make_scene",
    "synthetic_sequence",
    "synthetic_pair",
    "PEDESTRIAN",
    "REGULAR_VEHICLE",
    "DYNAMIC_THRESHOLD",
]

PEDESTRIAN = 17  # AV2 AnnotationCategories codes (1-based), see data/sceneflow/av2_api_val_pair
REGULAR_VEHICLE = 19
DYNAMIC_THRESHOLD = 0.05  # m, AV2: dynamic = |flow - ego_flow| >= 0.05

BOX, CYLINDER = 0, 1


# --------------------------------------------------------------------------------------------
# sensor and world description
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lidar:
    """A spinning multi-beam lidar: beams evenly spread over ``vertical_fov`` (degrees, low/high),
    one ray per beam every ``azimuth_resolution`` degrees, Gaussian range noise (m, 1 sigma),
    random ray ``dropout`` fraction, returns kept for ``min_range <= range <= max_range``."""

    n_beams: int = 32
    vertical_fov: tuple[float, float] = (-25.0, 3.0)
    azimuth_resolution: float = 0.35
    max_range: float = 60.0
    min_range: float = 1.0
    range_noise: float = 0.02
    sensor_height: float = 1.73
    dropout: float = 0.0

    def __post_init__(self):
        lo, hi = (float(v) for v in self.vertical_fov)
        checks = [
            (int(self.n_beams) >= 1, f"n_beams must be >= 1, got {self.n_beams}"),
            (
                -90 < lo < hi < 90,
                "vertical_fov must be (low, high) degrees with -90 < low < high < 90, got "
                f"{self.vertical_fov}",
            ),
            (
                0 < self.azimuth_resolution <= 45,
                f"azimuth_resolution must be in (0, 45] degrees, got {self.azimuth_resolution}",
            ),
            (
                0 <= self.min_range < self.max_range,
                f"need 0 <= min_range < max_range, got {self.min_range}, {self.max_range}",
            ),
            (self.range_noise >= 0, f"range_noise must be >= 0 m, got {self.range_noise}"),
            (self.sensor_height > 0, f"sensor_height must be > 0 m, got {self.sensor_height}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PriorlabError(msg)

    @property
    def n_azimuth(self) -> int:
        return max(1, int(round(360.0 / self.azimuth_resolution)))

    def ray_directions(self) -> np.ndarray:
        """Unit ray directions (n_beams * n_azimuth, 3) in the sensor frame, beam-major."""
        lo, hi = self.vertical_fov
        elev = np.deg2rad(np.linspace(lo, hi, int(self.n_beams)))
        az = np.linspace(-np.pi, np.pi, self.n_azimuth, endpoint=False)
        ce, se = np.cos(elev)[:, None], np.sin(elev)[:, None]
        d = np.stack(
            [ce * np.cos(az)[None], ce * np.sin(az)[None], np.broadcast_to(se, (len(elev), len(az)))], -1
        )
        return d.reshape(-1, 3)


@dataclass
class Structure:
    """A box (``size`` = length, width, height) or vertical cylinder (``size`` = radius, radius,
    height) standing on the ground; pose at time t from constant speed along the heading and
    constant yaw rate, starting at ``(x, y, yaw)``."""

    kind: int  # BOX or CYLINDER
    size: tuple[float, float, float]
    x: float
    y: float
    yaw: float = 0.0
    speed: float = 0.0
    yaw_rate: float = 0.0
    object_id: int = 0  # 0: static background
    category: int = 0  # AV2 code, 0 background

    def pose2d(self, t: float) -> tuple[float, float, float]:
        return ctrv(self.x, self.y, self.yaw, self.speed, self.yaw_rate, t)


def ctrv(x, y, yaw, speed, yaw_rate, t):
    """Exact constant-turn-rate-and-velocity motion: (x, y, yaw) after time ``t`` (vectorised)."""
    x, y, yaw, speed, yaw_rate = (np.asarray(v, dtype=np.float64) for v in (x, y, yaw, speed, yaw_rate))
    yaw_t = yaw + yaw_rate * t
    small = np.abs(yaw_rate) < 1e-9
    w = np.where(small, 1.0, yaw_rate)
    dx = np.where(small, speed * t * np.cos(yaw), speed / w * (np.sin(yaw_t) - np.sin(yaw)))
    dy = np.where(small, speed * t * np.sin(yaw), -speed / w * (np.cos(yaw_t) - np.cos(yaw)))
    return x + dx, y + dy, yaw_t


def _se2_to_4x4(x, y, yaw, z=0.0) -> np.ndarray:
    c, s = math.cos(float(yaw)), math.sin(float(yaw))
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[:3, 3] = [float(x), float(y), float(z)]
    return T


# --------------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One sweep. ``points`` in this frame's sensor frame; ``flow`` to the next frame (AV2
    convention); ``hit`` = index of the structure each point lies on (-1: ground)."""

    index: int
    time: float
    points: np.ndarray  # (N,3) float32
    pose: np.ndarray  # (4,4) float64, sensor -> world
    flow: np.ndarray  # (N,3) float32, to frame index+1
    object_id: np.ndarray  # (N,) int32, 0 = ground / static background
    classes: np.ndarray  # (N,) uint8, AV2 codes
    dynamic: np.ndarray  # (N,) bool
    is_ground: np.ndarray  # (N,) bool
    hit: np.ndarray  # (N,) int32
    ego_motion: np.ndarray  # (4,4) float64: this sensor frame -> next sensor frame

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class SyntheticSequence:
    """Consecutive frames of one scene plus the true trajectories of frame 0's points.

    ``trajectories[k]`` is where frame 0's points are at frame k, **in frame k's sensor frame**
    (the convention :func:`priorlab.sceneflow.trajectory.integrate_trajectories` returns).
    """

    scene: "Scene"
    frames: list[Frame]
    trajectories: np.ndarray  # (T, N0, 3) float32

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, k) -> Frame:
        return self.frames[k]

    def __iter__(self):
        return iter(self.frames)

    @property
    def clouds(self) -> list[np.ndarray]:
        return [f.points for f in self.frames]

    @property
    def poses(self) -> np.ndarray:
        """(T,4,4) sensor->world poses."""
        return np.stack([f.pose for f in self.frames])

    @property
    def relative_poses(self) -> np.ndarray:
        """(T,4,4) ``T_0<-k``: maps frame k's points into frame 0's sensor frame."""
        P0inv = np.linalg.inv(self.frames[0].pose)
        return np.stack([P0inv @ f.pose for f in self.frames])

    def pair(self, k: int = 0) -> dict:
        """Frames k and k+1 as an AV2-style pair dict (see :func:`synthetic_pair`)."""
        if not 0 <= k < len(self.frames) - 1:
            raise PriorlabError(
                f"pair index {k} out of range for a {len(self.frames)}-frame sequence; use "
                f"0..{len(self.frames) - 2}"
            )
        return _pair_dict(self.frames[k], self.frames[k + 1])


# --------------------------------------------------------------------------------------------
# the scene
# --------------------------------------------------------------------------------------------


class Scene:
    """A lidar, an ego trajectory and a list of :class:`Structure` (see module docstring)."""

    def __init__(
        self,
        lidar: Lidar,
        structures: list[Structure],
        *,
        ego_speed: float = 10.0,
        ego_yaw_rate: float = 0.0,
        dt: float = 0.1,
        seed: int = 0,
    ):
        if dt <= 0:
            raise PriorlabError(f"dt must be > 0 s, got {dt}")
        self.lidar = lidar
        self.structures = list(structures)
        self.ego_speed = float(ego_speed)
        self.ego_yaw_rate = float(ego_yaw_rate)
        self.dt = float(dt)
        self.seed = int(seed)
        self._dirs = lidar.ray_directions()
        s = self.structures
        self._kind = np.array([o.kind for o in s], dtype=np.int8)
        self._size = np.array([o.size for o in s], dtype=np.float64).reshape(-1, 3)
        self._init = np.array([[o.x, o.y, o.yaw, o.speed, o.yaw_rate] for o in s], dtype=np.float64).reshape(
            -1, 5
        )
        self._object_id = np.array([o.object_id for o in s], dtype=np.int32)
        self._category = np.array([o.category for o in s], dtype=np.uint8)

    # ---- poses -----------------------------------------------------------------------------
    def ego_pose2d(self, t: float):
        x, y, yaw = ctrv(0.0, 0.0, 0.0, self.ego_speed, self.ego_yaw_rate, t)
        return float(x), float(y), float(yaw)

    def ego_pose(self, t: float) -> np.ndarray:
        """4x4 sensor -> world pose at time ``t`` (s)."""
        x, y, yaw = self.ego_pose2d(t)
        return _se2_to_4x4(x, y, yaw, self.lidar.sensor_height)

    def structure_poses2d(self, t: float) -> np.ndarray:
        """(S,3) world (x, y, yaw) of every structure at time ``t``."""
        if not len(self.structures):
            return np.zeros((0, 3))
        x, y, yaw = ctrv(*self._init.T, t)
        return np.stack([x, y, yaw], -1)

    # ---- ray casting -----------------------------------------------------------------------
    def cast(self, t: float, rng: np.random.Generator | None = None):
        """Ray-cast the scene at time ``t``: (points (N,3) float32 in the sensor frame, hit (N,))."""
        L = self.lidar
        d = self._dirs
        h = L.sensor_height
        n = len(d)
        best = np.full(n, np.inf)
        hit = np.full(n, -2, dtype=np.int32)  # -2: nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            tg = np.where(d[:, 2] < -1e-9, -h / d[:, 2], np.inf)
        ground = tg < best
        best[ground], hit[ground] = tg[ground], -1

        if len(self.structures):
            ex, ey, eyaw = self.ego_pose2d(t)
            P = self.structure_poses2d(t)
            c, s = math.cos(eyaw), math.sin(eyaw)
            dxw, dyw = P[:, 0] - ex, P[:, 1] - ey
            cx = c * dxw + s * dyw  # structure centres in the sensor frame
            cy = -s * dxw + c * dyw
            cyaw = P[:, 2] - eyaw
            zlo = -h
            zhi = -h + self._size[:, 2]
            tt = np.full((n, len(self.structures)), np.inf)
            with np.errstate(divide="ignore", invalid="ignore"):
                bi = np.flatnonzero(self._kind == BOX)
                if len(bi):
                    cb, sb = np.cos(cyaw[bi]), np.sin(cyaw[bi])
                    # ray in box-local coordinates: origin o = R^T (0 - c), direction R^T d
                    ox = -(cb * cx[bi] + sb * cy[bi])
                    oy = -(-sb * cx[bi] + cb * cy[bi])
                    dx = d[:, :1] * cb + d[:, 1:2] * sb
                    dy = -d[:, :1] * sb + d[:, 1:2] * cb
                    dz = d[:, 2:3]
                    hl, hw = self._size[bi, 0] / 2, self._size[bi, 1] / 2
                    tnear = np.full((n, len(bi)), -np.inf)
                    tfar = np.full((n, len(bi)), np.inf)
                    for o, dd, lo, hi in ((ox, dx, -hl, hl), (oy, dy, -hw, hw), (0.0, dz, zlo, zhi[bi])):
                        t1 = (lo - o) / dd
                        t2 = (hi - o) / dd
                        t1 = np.where(np.isnan(t1), -np.inf, t1)
                        t2 = np.where(np.isnan(t2), np.inf, t2)
                        tnear = np.maximum(tnear, np.minimum(t1, t2))
                        tfar = np.minimum(tfar, np.maximum(t1, t2))
                    ok = (tnear <= tfar) & (tnear > 1e-6)
                    tt[:, bi] = np.where(ok, tnear, np.inf)
                ci = np.flatnonzero(self._kind == CYLINDER)
                if len(ci):
                    r = self._size[ci, 0]
                    ox, oy = -cx[ci], -cy[ci]
                    dx, dy, dz = d[:, :1], d[:, 1:2], d[:, 2:3]
                    a = dx * dx + dy * dy
                    b = 2 * (ox * dx + oy * dy)
                    cc = ox * ox + oy * oy - r * r
                    disc = b * b - 4 * a * cc
                    ts = (-b - np.sqrt(np.where(disc >= 0, disc, np.nan))) / (2 * a)
                    zs = dz * ts
                    side = np.where((disc >= 0) & (ts > 1e-6) & (zs >= zlo) & (zs <= zhi[ci]), ts, np.inf)
                    ttop = zhi[ci] / dz  # top cap, plane z = zhi
                    px, py = ttop * dx - cx[ci], ttop * dy - cy[ci]
                    top = np.where((ttop > 1e-6) & (px * px + py * py <= r * r), ttop, np.inf)
                    tt[:, ci] = np.minimum(np.nan_to_num(side, nan=np.inf), np.nan_to_num(top, nan=np.inf))
            j = np.argmin(tt, axis=1)
            tj = tt[np.arange(n), j]
            closer = tj < best
            best[closer], hit[closer] = tj[closer], j[closer]

        keep = np.isfinite(best) & (best >= L.min_range) & (best <= L.max_range)
        if rng is not None and L.dropout > 0:
            keep &= rng.random(n) >= L.dropout
        rng_m = best[keep]
        if rng is not None and L.range_noise > 0:
            rng_m = rng_m + rng.normal(0.0, L.range_noise, size=rng_m.shape)
        pts = d[keep] * rng_m[:, None]
        return pts.astype(np.float32), hit[keep]

    # ---- exact motion of surface points ----------------------------------------------------
    def transport(self, points: np.ndarray, hit: np.ndarray, t0: float, t1: float) -> np.ndarray:
        """Where surface points seen at ``t0`` (sensor frame at t0, rigidly attached to structure
        ``hit``, -1 = ground) are at ``t1``, in the sensor frame at t1 (float64)."""
        p = np.asarray(points, dtype=np.float64)
        hit = np.asarray(hit)
        e0, e1 = self.ego_pose2d(t0), self.ego_pose2d(t1)
        c0, s0 = math.cos(e0[2]), math.sin(e0[2])
        wx = c0 * p[:, 0] - s0 * p[:, 1] + e0[0]
        wy = s0 * p[:, 0] + c0 * p[:, 1] + e0[1]
        obj = hit >= 0
        if obj.any():
            P0, P1 = self.structure_poses2d(t0), self.structure_poses2d(t1)
            k = hit[obj]
            a0, a1 = P0[k], P1[k]
            ca, sa = np.cos(a0[:, 2]), np.sin(a0[:, 2])
            lx = ca * (wx[obj] - a0[:, 0]) + sa * (wy[obj] - a0[:, 1])
            ly = -sa * (wx[obj] - a0[:, 0]) + ca * (wy[obj] - a0[:, 1])
            cb, sb = np.cos(a1[:, 2]), np.sin(a1[:, 2])
            wx[obj] = cb * lx - sb * ly + a1[:, 0]
            wy[obj] = sb * lx + cb * ly + a1[:, 1]
        c1, s1 = math.cos(e1[2]), math.sin(e1[2])
        dx, dy = wx - e1[0], wy - e1[1]
        return np.stack([c1 * dx + s1 * dy, -s1 * dx + c1 * dy, p[:, 2]], -1)

    # ---- frames ----------------------------------------------------------------------------
    def frame(self, k: int) -> Frame:
        """Frame ``k`` (time ``k * dt``); noise seeded by (scene seed, k), so frames are
        reproducible whatever the sequence length."""
        t = k * self.dt
        rng = np.random.default_rng([self.seed, 7919, int(k)])
        pts, hit = self.cast(t, rng)
        nxt = self.transport(pts, hit, t, t + self.dt)
        flow = (nxt - pts).astype(np.float32)
        pose0, pose1 = self.ego_pose(t), self.ego_pose(t + self.dt)
        ego_motion = np.linalg.inv(pose1) @ pose0
        ego_flow = pts.astype(np.float64) @ ego_motion[:3, :3].T + ego_motion[:3, 3] - pts
        dynamic = np.linalg.norm(flow - ego_flow, axis=1) >= DYNAMIC_THRESHOLD
        safe = np.clip(hit, 0, None)
        on_obj = hit >= 0
        object_id = np.where(on_obj, self._object_id[safe] if len(self.structures) else 0, 0).astype(np.int32)
        classes = np.where(on_obj, self._category[safe] if len(self.structures) else 0, 0).astype(np.uint8)
        return Frame(
            index=int(k),
            time=t,
            points=pts,
            pose=pose0,
            flow=flow,
            object_id=object_id,
            classes=classes,
            dynamic=dynamic,
            is_ground=hit == -1,
            hit=hit.astype(np.int32),
            ego_motion=ego_motion,
        )

    def frames(self, n: int, *, start: int = 0) -> list[Frame]:
        if int(n) < 1:
            raise PriorlabError(f"number of frames must be >= 1, got {n}")
        return [self.frame(start + k) for k in range(int(n))]

    def trajectories(self, frame: Frame, n: int) -> np.ndarray:
        """(n, N, 3) exact positions of ``frame``'s points at frames index..index+n-1, each in
        that frame's own sensor frame."""
        t0 = frame.time
        out = [frame.points.astype(np.float32)]
        for k in range(1, int(n)):
            out.append(self.transport(frame.points, frame.hit, t0, t0 + k * self.dt).astype(np.float32))
        return np.stack(out)

    def sequence(self, n: int, *, start: int = 0) -> SyntheticSequence:
        fr = self.frames(n, start=start)
        return SyntheticSequence(scene=self, frames=fr, trajectories=self.trajectories(fr[0], n))

    def surface_distance(self, points: np.ndarray, hit: np.ndarray, t: float) -> np.ndarray:
        """Unsigned distance (m) of sensor-frame points at time ``t`` to the surface of the
        structure they belong to (``hit``; -1 = ground plane). Used by the tests."""
        p = np.asarray(points, dtype=np.float64)
        h = self.lidar.sensor_height
        out = np.abs(p[:, 2] + h)
        obj = np.flatnonzero(np.asarray(hit) >= 0)
        if len(obj):
            ex, ey, eyaw = self.ego_pose2d(t)
            c, s = math.cos(eyaw), math.sin(eyaw)
            wx = c * p[obj, 0] - s * p[obj, 1] + ex
            wy = s * p[obj, 0] + c * p[obj, 1] + ey
            z = p[obj, 2] + h
            P = self.structure_poses2d(t)[hit[obj]]
            ca, sa = np.cos(P[:, 2]), np.sin(P[:, 2])
            lx = ca * (wx - P[:, 0]) + sa * (wy - P[:, 1])
            ly = -sa * (wx - P[:, 0]) + ca * (wy - P[:, 1])
            size = self._size[hit[obj]]
            kind = self._kind[hit[obj]]
            # boxes: distance to the surface of [-l/2,l/2]x[-w/2,w/2]x[0,h]
            q = np.stack(
                [
                    np.abs(lx) - size[:, 0] / 2,
                    np.abs(ly) - size[:, 1] / 2,
                    np.abs(z - size[:, 2] / 2) - size[:, 2] / 2,
                ],
                -1,
            )
            outside = np.linalg.norm(np.maximum(q, 0), axis=1)
            inside = np.minimum(q.max(1), 0)
            dbox = np.abs(outside + inside)
            # cylinders: side and top cap
            rr = np.hypot(lx, ly) - size[:, 0]
            qz = np.abs(z - size[:, 2] / 2) - size[:, 2] / 2
            qc = np.stack([rr, qz], -1)
            dcyl = np.abs(np.linalg.norm(np.maximum(qc, 0), axis=1) + np.minimum(qc.max(1), 0))
            out[obj] = np.where(kind == BOX, dbox, dcyl)
        return out


# --------------------------------------------------------------------------------------------
# scene generator
# --------------------------------------------------------------------------------------------


def make_scene(
    seed: int = 0,
    *,
    n_objects: int = 12,
    n_pedestrians: int = 6,
    moving_fraction: float = 0.75,
    static_background: bool = True,
    ego_speed: float = 10.0,
    ego_yaw_rate: float = 0.0,
    dt: float = 0.1,
    n_beams: int = 32,
    vertical_fov: tuple[float, float] = (-25.0, 3.0),
    azimuth_resolution: float = 0.35,
    max_range: float = 60.0,
    min_range: float = 1.0,
    range_noise: float = 0.02,
    sensor_height: float = 1.73,
    dropout: float = 0.0,
    object_yaw_rate: float = 0.15,
) -> Scene:
    """A seeded urban street: ego drives along +x in lane y = 0 at ``ego_speed`` m/s (turning at
    ``ego_yaw_rate`` rad/s); ``n_objects`` cars (boxes ~4.5 x 1.8 x 1.5 m) in four lanes
    (two with the ego, two oncoming) and in parking lanes, ``moving_fraction`` of them driving
    (with yaw rates up to ``object_yaw_rate`` rad/s); ``n_pedestrians`` cylinders walking on the
    sidewalks or standing; with ``static_background``, buildings and poles. Lidar parameters as
    in :class:`Lidar`; frames are ``dt`` s apart."""
    if n_objects < 0 or n_pedestrians < 0:
        raise PriorlabError(f"n_objects and n_pedestrians must be >= 0, got {n_objects}, {n_pedestrians}")
    if not 0 <= moving_fraction <= 1:
        raise PriorlabError(f"moving_fraction must be in [0, 1], got {moving_fraction}")
    lidar = Lidar(
        n_beams=n_beams,
        vertical_fov=tuple(vertical_fov),
        azimuth_resolution=azimuth_resolution,
        max_range=max_range,
        min_range=min_range,
        range_noise=range_noise,
        sensor_height=sensor_height,
        dropout=dropout,
    )
    rng = np.random.default_rng([int(seed), 104729])
    structures: list[Structure] = []
    # (lane y, heading, base speed)
    lanes = [
        (0.0, 0.0, ego_speed),
        (3.5, 0.0, rng.uniform(6, 13)),
        (-3.5, np.pi, rng.uniform(6, 13)),
        (-7.0, np.pi, rng.uniform(6, 13)),
    ]
    parking = [(-10.5, 0.0), (7.0, 0.0)]
    taken: dict[float, list[float]] = {}

    def free_x(y, lo, hi, gap):
        for _ in range(200):
            x = rng.uniform(lo, hi)
            if all(abs(x - o) >= gap for o in taken.get(y, [])):
                taken.setdefault(y, []).append(x)
                return x
        return None

    oid = 1
    n_moving = int(round(n_objects * moving_fraction))
    for i in range(n_objects):
        moving = i < n_moving
        size = (rng.uniform(4.0, 5.0), rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8))
        if moving:
            li = int(rng.integers(len(lanes)))
            y, heading, v = lanes[li]
            if li == 0:  # ego lane: only ahead or well behind, at ego speed +- 1 m/s
                x = free_x(y, -45, 50, 14)
                if x is not None and abs(x) < 12:
                    taken[y].remove(x)
                    x = None
                speed = v + rng.uniform(-1, 1)
            else:
                x = free_x(y, -45, 50, 9)
                speed = v + rng.uniform(-0.5, 0.5)
            yaw_rate = rng.uniform(-object_yaw_rate, object_yaw_rate) if li else 0.0
            if x is None:
                continue
            structures.append(
                Structure(
                    BOX,
                    size,
                    x,
                    y + rng.uniform(-0.3, 0.3),
                    heading + rng.uniform(-0.05, 0.05),
                    speed,
                    yaw_rate,
                    oid,
                    REGULAR_VEHICLE,
                )
            )
        else:
            y, heading = parking[int(rng.integers(len(parking)))]
            x = free_x(y, -40, 45, 6)
            if x is None:
                continue
            structures.append(
                Structure(BOX, size, x, y, heading + rng.uniform(-0.1, 0.1), 0.0, 0.0, oid, REGULAR_VEHICLE)
            )
        oid += 1
    for i in range(n_pedestrians):
        side = 1 if rng.random() < 0.5 else -1
        y = side * rng.uniform(11.0, 13.5)
        x = rng.uniform(-30, 40)
        r, hgt = rng.uniform(0.25, 0.35), rng.uniform(1.55, 1.9)
        if rng.random() < 0.8:
            speed, heading = (
                rng.uniform(1.0, 1.8),
                (0.0 if rng.random() < 0.5 else np.pi) + rng.uniform(-0.2, 0.2),
            )
        else:
            speed, heading = 0.0, 0.0
        structures.append(Structure(CYLINDER, (r, r, hgt), x, y, heading, speed, 0.0, oid, PEDESTRIAN))
        oid += 1
    if static_background:
        for side in (1, -1):
            x = -60.0
            while x < 70:
                length = rng.uniform(8, 25)
                depth = rng.uniform(8, 15)
                if rng.random() < 0.8:
                    structures.append(
                        Structure(
                            BOX,
                            (length, depth, rng.uniform(5, 15)),
                            x + length / 2,
                            side * (16.0 + depth / 2 + rng.uniform(0, 2)),
                            rng.uniform(-0.03, 0.03),
                        )
                    )
                x += length + rng.uniform(1, 6)
            for px in np.arange(-50, 60, rng.uniform(12, 18)):
                structures.append(
                    Structure(CYLINDER, (0.15, 0.15, rng.uniform(4, 7)), px + rng.uniform(-2, 2), side * 9.3)
                )
    return Scene(lidar, structures, ego_speed=ego_speed, ego_yaw_rate=ego_yaw_rate, dt=dt, seed=seed)


def synthetic_sequence(n_frames: int, *, seed: int = 0, start: int = 0, **params) -> SyntheticSequence:
    """``n_frames`` consecutive frames of :func:`make_scene` (``seed``, ``**params``) with the true
    trajectories of frame 0's points."""
    return make_scene(seed, **params).sequence(n_frames, start=start)


def _pair_dict(f0: Frame, f1: Frame) -> dict:
    pc0 = f0.points
    return dict(
        pc0=pc0,
        pc1=f1.points,
        flow=f0.flow,
        classes=f0.classes,
        dynamic=f0.dynamic,
        ego_motion=f0.ego_motion.astype(np.float32),
        is_ground0=f0.is_ground,
        is_ground1=f1.is_ground,
        eval_mask=(np.abs(pc0[:, 0]) <= 50) & (np.abs(pc0[:, 1]) <= 50) & ~f0.is_ground,
        object_id0=f0.object_id,
        object_id1=f1.object_id,
        pose0=f0.pose,
        pose1=f1.pose,
    )


def synthetic_pair(seed: int = 0, **params) -> dict:
    """One synthetic frame pair as a dict with the keys of the AV2 pair npz:
    ``pc0, pc1`` (float32, own sensor frames), ``flow`` (pc0 -> frame 1, includes ego motion),
    ``classes`` (AV2 codes), ``dynamic``, ``ego_motion`` (4x4, frame 0 -> frame 1),
    ``is_ground0``, ``is_ground1``, ``eval_mask`` (|x|,|y| <= 50 m, not ground), ``object_id0``,
    ``object_id1``, ``pose0``, ``pose1`` (sensor -> world). ``params`` go to :func:`make_scene`."""
    scene = make_scene(seed, **params)
    return _pair_dict(scene.frame(0), scene.frame(1))
