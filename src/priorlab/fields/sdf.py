"""Shape families with known covariates, signed-distance samples and surface extraction.

A stand-in for populations of 3D shapes with covariates (NAISR's Starman, hippocampi, airways;
Jiao et al., arXiv:2303.09234): a template implicit surface ``T`` is warped by displacement
fields, one per known covariate and one per hidden (individual) variation, each scaled linearly
by its value::

    F(p) = T(p + sum_k c_k u_k(p) + sum_j a_j v_j(p))        shape = {p : F(p) = 0}

The warp acts on the query point (an Eulerian map, the form NAISR itself uses), so ``F`` is exact
on its zero level set but is not a distance away from it. :func:`sample_sdf` therefore measures
true signed distances: the sign from ``F``, the magnitude to a dense sampling of the surface
found by marching cubes (``skimage.measure.marching_cubes``). :func:`extract_surface` turns any
grid of implicit values (analytic or a network's) into surface points for Chamfer distances.

Everything here is NumPy (float64); convert to tensors at the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from priorlab.errors import PriorlabError
from priorlab.validation import check_number

Field = Callable[[np.ndarray], np.ndarray]  # (N, 3) points -> (N,) values or (N, 3) vectors


def _check_points(points, who: str) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise PriorlabError(f"{who}: points must have shape (N, 3), got {points.shape}")
    if not np.isfinite(points).all():
        raise PriorlabError(f"{who}: points contain NaN or infinite values")
    return points


def capsule_sdf(points: np.ndarray, half_length: float = 0.4, radius: float = 0.22) -> np.ndarray:
    """Exact signed distance to a capsule (a tube with round caps) along z, centred at 0."""
    points = _check_points(points, "capsule_sdf")
    half_length = check_number(half_length, "half_length", who="capsule_sdf", low=0.0)
    radius = check_number(radius, "radius", who="capsule_sdf", low=0.0, low_open=True)
    axis = np.clip(points[:, 2], -half_length, half_length)
    offset = points - np.stack([np.zeros_like(axis), np.zeros_like(axis), axis], axis=1)
    return np.linalg.norm(offset, axis=1) - radius


@dataclass(frozen=True)
class Shape:
    """One member of a family: its known covariates and its hidden individual variation."""

    covariates: np.ndarray  # (K,)
    variation: np.ndarray  # (V,)


@dataclass(frozen=True)
class ShapeFamily:
    """A template implicit function warped by named, linearly scaled displacement fields.

    ``effects`` are the known covariates' fields ``u_k`` (values of ``c_k`` in ``[-1, 1]``);
    ``variations`` are hidden per-shape fields ``v_j`` with amplitudes ``a_j ~ N(0, std^2)``
    clipped to ``+-2 std``. Shapes must stay inside the cube ``[-bound, bound]^3``.
    """

    template: Field
    effects: Mapping[str, Field]
    variations: Mapping[str, Field]
    variation_std: float = 0.1
    bound: float = 1.0

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return tuple(self.effects)

    def implicit(self, points: np.ndarray, shape: Shape) -> np.ndarray:
        """``F(p)`` of ``shape`` at ``points`` (N, 3): negative inside, zero on the surface."""
        points = _check_points(points, "ShapeFamily.implicit")
        covariates = np.asarray(shape.covariates, dtype=np.float64)
        variation = np.asarray(shape.variation, dtype=np.float64)
        if covariates.shape != (len(self.effects),) or variation.shape != (len(self.variations),):
            raise PriorlabError(
                f"ShapeFamily.implicit: the family has {len(self.effects)} covariate(s) and "
                f"{len(self.variations)} variation(s); got shapes {covariates.shape} and "
                f"{variation.shape}")
        warped = points.copy()
        for value, field in zip(covariates, self.effects.values()):
            warped += value * field(points)
        for value, field in zip(variation, self.variations.values()):
            warped += value * field(points)
        return self.template(warped)

    def draw(self, n: int, rng: np.random.Generator, covariates: np.ndarray | None = None,
             individual: bool = True) -> list[Shape]:
        """``n`` shapes: covariates uniform in ``[-1, 1]`` unless given as an (n, K) array;
        hidden variations drawn (or all zero with ``individual=False``: the population trend)."""
        n = check_number(n, "n", who="ShapeFamily.draw", low=1, integer=True)
        k, v = len(self.effects), len(self.variations)
        if covariates is None:
            covariates = rng.uniform(-1.0, 1.0, size=(n, k))
        covariates = np.asarray(covariates, dtype=np.float64)
        if covariates.shape != (n, k) or not np.isfinite(covariates).all():
            raise PriorlabError(f"ShapeFamily.draw: covariates must be a finite ({n}, {k}) array, "
                                f"got shape {covariates.shape}")
        limit = 2.0 * self.variation_std
        amplitudes = (np.clip(rng.normal(0.0, self.variation_std, size=(n, v)), -limit, limit)
                      if individual else np.zeros((n, v)))
        return [Shape(covariates[i], amplitudes[i]) for i in range(n)]


def tube_family() -> ShapeFamily:
    """A capsule along z with three known covariates and two hidden variations.

    Covariates (each in ``[-1, 1]``): ``length`` stretches the tube along z (half-extent x0.77
    to x1.43), ``thickness`` scales its radius (x0.74 to x1.54), ``bend`` curves its axis into
    a parabola in the x-z plane (tip offset up to ~0.4). Hidden: ``sway`` bows the axis in y,
    ``bulge`` widens the middle and narrows the ends. The effects add up in displacement, the
    model class NAISR assumes (its Starman data is built the same way).
    """
    zero = np.zeros

    def length(p):
        return np.stack([zero(len(p)), zero(len(p)), -0.3 * p[:, 2]], axis=1)

    def thickness(p):
        return np.stack([-0.35 * p[:, 0], -0.35 * p[:, 1], zero(len(p))], axis=1)

    def bend(p):
        return np.stack([0.45 * p[:, 2] ** 2, zero(len(p)), zero(len(p))], axis=1)

    def sway(p):
        return np.stack([zero(len(p)), np.sin(np.pi * p[:, 2]), zero(len(p))], axis=1)

    def bulge(p):
        factor = -np.cos(np.pi * p[:, 2])
        return np.stack([factor * p[:, 0], factor * p[:, 1], zero(len(p))], axis=1)

    return ShapeFamily(template=capsule_sdf, effects={"length": length, "thickness": thickness,
                                                     "bend": bend},
                       variations={"sway": sway, "bulge": bulge}, variation_std=0.12)


def grid_points(resolution: int, bound: float = 1.0) -> np.ndarray:
    """Vertices of a ``resolution^3`` grid over ``[-bound, bound]^3``, shape (R^3, 3), in the
    C order of a ``(R, R, R)`` array indexed ``[x, y, z]``."""
    resolution = check_number(resolution, "resolution", who="grid_points", low=2, integer=True)
    bound = check_number(bound, "bound", who="grid_points", low=0.0, low_open=True)
    axis = np.linspace(-bound, bound, resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def extract_surface(values: np.ndarray, n_points: int, *, bound: float = 1.0,
                    seed: int = 0) -> np.ndarray:
    """``n_points`` points on the zero level set of a grid of implicit values (R, R, R) laid out
    as :func:`grid_points`: marching cubes, then area-weighted uniform sampling of its triangles.

    A field with no zero crossing (a failed fit) gets the ``n_points`` grid vertices nearest to
    zero instead, so a Chamfer distance stays finite and large rather than undefined.
    """
    from skimage.measure import marching_cubes

    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 3 or len(set(values.shape)) != 1 or values.shape[0] < 2:
        raise PriorlabError(f"extract_surface: values must be a cubic (R, R, R) grid, got {values.shape}")
    if not np.isfinite(values).all():
        raise PriorlabError("extract_surface: values contain NaN or infinite entries")
    n_points = check_number(n_points, "n_points", who="extract_surface", low=1, integer=True)
    rng = np.random.default_rng(seed)
    resolution = values.shape[0]
    spacing = 2.0 * bound / (resolution - 1)
    if not (values.min() < 0.0 < values.max()):
        nearest = np.argsort(np.abs(values).ravel())[:n_points]
        return grid_points(resolution, bound)[nearest]
    vertices, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3)
    vertices -= bound
    corners = vertices[faces]  # (F, 3 corners, 3)
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0],
                                          corners[:, 2] - corners[:, 0]), axis=1)
    if areas.sum() <= 0:
        return vertices[rng.integers(0, len(vertices), n_points)]
    chosen = rng.choice(len(faces), size=n_points, p=areas / areas.sum())
    r1, r2 = rng.random(n_points), rng.random(n_points)
    flip = r1 + r2 > 1  # fold the unit square onto the triangle
    r1, r2 = np.where(flip, 1 - r1, r1), np.where(flip, 1 - r2, r2)
    tri = corners[chosen]
    return tri[:, 0] + r1[:, None] * (tri[:, 1] - tri[:, 0]) + r2[:, None] * (tri[:, 2] - tri[:, 0])


def implicit_normals(implicit: Field, points: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Unit outward normals ``grad F / |grad F|`` by central differences."""
    points = _check_points(points, "implicit_normals")
    grads = np.stack([implicit(points + eps * e) - implicit(points - eps * e)
                      for e in np.eye(3)], axis=1) / (2 * eps)
    return grads / np.maximum(np.linalg.norm(grads, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class SDFSamples:
    """Training targets for one shape (DeepSDF / NAISR style).

    ``surface`` (S, 3) with unit ``normals`` (S, 3) lie on the zero level set; ``points`` (M, 3)
    are near the surface and in the whole cube, with true signed distances ``sdf`` (M,).
    """

    surface: np.ndarray
    normals: np.ndarray
    points: np.ndarray
    sdf: np.ndarray


def sample_sdf(implicit: Field, *, n_surface: int = 2000, n_near: int = 2000, n_space: int = 1000,
               near_std: float = 0.05, resolution: int = 64, dense: int = 30000, bound: float = 1.0,
               seed: int = 0) -> SDFSamples:
    """Surface points with normals and signed-distance samples of the shape ``{implicit = 0}``.

    The surface is found by marching cubes on a ``resolution^3`` grid and sampled densely
    (``dense`` points); a sample's distance is that to its nearest dense surface point (error
    about the dense spacing squared over the curvature radius), its sign that of ``implicit``.
    Near samples are surface points plus ``N(0, near_std^2)`` noise, space samples uniform.
    """
    check_number(near_std, "near_std", who="sample_sdf", low=0.0, low_open=True)
    rng = np.random.default_rng(seed)
    values = implicit(grid_points(resolution, bound)).reshape((resolution,) * 3)
    if not (values.min() < 0.0 < values.max()):
        raise PriorlabError("sample_sdf: the shape has no surface inside the cube "
                            f"[-{bound}, {bound}]^3 at resolution {resolution}")
    cloud = extract_surface(values, dense, bound=bound, seed=seed)
    surface = cloud[rng.choice(len(cloud), size=n_surface, replace=n_surface > len(cloud))]
    # snap the marching-cubes points onto the exact level set along the normal (one Newton step)
    normals = implicit_normals(implicit, surface)
    surface = surface - implicit(surface)[:, None] * normals
    normals = implicit_normals(implicit, surface)
    near = cloud[rng.integers(0, len(cloud), n_near)] + rng.normal(0.0, near_std, (n_near, 3))
    space = rng.uniform(-bound, bound, (n_space, 3))
    points = np.clip(np.concatenate([near, space]), -bound, bound)
    distance, _ = cKDTree(cloud).query(points)
    return SDFSamples(surface=surface, normals=normals, points=points,
                      sdf=np.sign(implicit(points)) * distance)
