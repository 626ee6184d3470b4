"""Projection-based equivariance regularisation (PER): soft equivariance under mixed symmetries.

Kim et al., "Regularizing Towards Soft Equivariance Under Mixed Symmetries", ICML 2023,
arXiv:2306.00356; official code kim-hyunsu/PER (``experiments/mixed-symmetry/
train_softemlp_checkpoint.py``: ``equiv_regularizer`` and ``AdjustEquiv``), built on the EMLP
library of Finzi et al. For each candidate symmetry group G_i and every linear layer, the
weights ``W`` (and bias ``b``) are pulled towards the G_i-equivariant subspace by

    R_i = sum over layers 0.5 ||W - P_i W||^2 + 0.5 ||b - P_i b||^2        (paper eq. 6)

where ``P_i`` is the orthogonal projection onto the maps that commute with the group action.
The loss is ``task + sum_i lambda_i R_i``. The strengths are tuned automatically from the
*relative* violation: after a warm-up with equal strengths, each is divided by
``(R_i / min_j R_j) ** power`` (official ``AdjustEquiv``, power 2 for the inertia task), so the
group the data respects (smallest violation) keeps its strength and the broken ones are relaxed.

Projections are computed numerically as in EMLP: the equivariance constraint
``rho_out(A) W - W rho_in(A) = 0`` for every Lie-algebra generator ``A`` and
``rho_out(h) W rho_in(h)^T = W`` for every discrete generator ``h`` is stacked into one matrix
and its nullspace (from an SVD) spans the equivariant subspace; ``P = Q Q^T``. Representations
are direct sums of tensor powers of the defining 3-d representation (scalars, vectors, rank-2
tensors, ...), laid out rank by rank, so ``P`` acts block by block with one small projector per
(rank_out, rank_in) pair — the weights of a 200 x 150 layer never need a 30,000^2 matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor, describe

_DIM = 3  # the defining representation: rotations/reflections of 3-d space


def _rotation_generator(axis: int) -> torch.Tensor:
    """The so(3) generator of rotations about coordinate ``axis`` (an antisymmetric matrix)."""
    i, j = [k for k in range(_DIM) if k != axis]
    g = torch.zeros(_DIM, _DIM, dtype=torch.float64)
    g[i, j], g[j, i] = -1.0, 1.0
    return g


@dataclass(frozen=True)
class Group:
    """A matrix group on R^3 given by its Lie-algebra generators and discrete generators."""

    name: str
    lie: tuple[torch.Tensor, ...]
    discrete: tuple[torch.Tensor, ...]


def _o2_about(axis: int) -> Group:
    # O(2) acting on the plane orthogonal to ``axis`` and fixing ``axis`` (EMLP's
    # Embed(O(2), 3, slice) used by the official inertia runs): rotations about the axis and a
    # reflection of one in-plane coordinate.
    plane = [k for k in range(_DIM) if k != axis]
    reflect = torch.eye(_DIM, dtype=torch.float64)
    reflect[plane[0], plane[0]] = -1.0
    return Group(f"o2_{'xyz'[axis]}", (_rotation_generator(axis),), (reflect,))


GROUPS = {
    "o3": Group("o3", tuple(_rotation_generator(a) for a in range(_DIM)),
                (-torch.eye(_DIM, dtype=torch.float64),)),
    "so3": Group("so3", tuple(_rotation_generator(a) for a in range(_DIM)), ()),
    "o2_x": _o2_about(0), "o2_y": _o2_about(1), "o2_z": _o2_about(2),
    "so2_z": Group("so2_z", (_rotation_generator(2),), ()),
}


def get_group(name: str) -> Group:
    """A group by name: ``o3``, ``so3``, ``o2_x``, ``o2_y``, ``o2_z`` (O(2) fixing that axis), ``so2_z``."""
    if name not in GROUPS:
        raise did_you_mean(str(name), GROUPS, "symmetry group")
    return GROUPS[name]


def _tensor_lie(a: torch.Tensor, rank: int) -> torch.Tensor:
    """The Lie-algebra action on rank-``rank`` tensors: sum of a acting on each factor."""
    out = torch.zeros(_DIM ** rank, _DIM ** rank, dtype=torch.float64)
    for k in range(rank):
        out += torch.kron(torch.kron(torch.eye(_DIM ** k, dtype=torch.float64), a),
                          torch.eye(_DIM ** (rank - k - 1), dtype=torch.float64))
    return out


def _tensor_group(h: torch.Tensor, rank: int) -> torch.Tensor:
    """The group action on rank-``rank`` tensors: h (x) h (x) ... (x) h."""
    out = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(rank):
        out = torch.kron(out, h.contiguous())
    return out


@lru_cache(maxsize=None)
def block_projector(group: str, rank_out: int, rank_in: int) -> torch.Tensor:
    """P (float64, symmetric, idempotent) onto equivariant maps from rank_in to rank_out tensors.

    Acts on a block flattened row-major (index ``i_out * 3**rank_in + i_in``). The nullspace of
    the stacked constraints is read off an SVD with EMLP's relative tolerance.
    """
    g = get_group(group)
    d_out, d_in = _DIM ** rank_out, _DIM ** rank_in
    eye_out = torch.eye(d_out, dtype=torch.float64)
    eye_in = torch.eye(d_in, dtype=torch.float64)
    rows = [torch.kron(_tensor_lie(a, rank_out), eye_in)
            - torch.kron(eye_out, _tensor_lie(a, rank_in).T.contiguous()) for a in g.lie]
    rows += [torch.kron(_tensor_group(h, rank_out), _tensor_group(h, rank_in))
             - torch.eye(d_out * d_in, dtype=torch.float64) for h in g.discrete]
    if not rows:
        return torch.eye(d_out * d_in, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(torch.cat(rows), full_matrices=True)
    rank = int((s > 1e-9 * max(float(s.max()), 1.0)).sum())
    basis = vh[rank:].T  # columns span the nullspace
    return basis @ basis.T


@dataclass(frozen=True)
class TensorRep:
    """A direct sum ``m0 scalars + m1 vectors + m2 rank-2 tensors + ...``, laid out rank by rank.

    ``TensorRep((5, 5))`` is five scalars then five 3-vectors (dimension 20);
    ``TensorRep((0, 0, 1))`` is one 3x3 matrix flattened row-major (dimension 9).
    """

    multiplicities: tuple[int, ...]

    def __post_init__(self):
        mult = tuple(self.multiplicities)
        if not mult or any(not isinstance(m, int) or m < 0 for m in mult) or sum(mult) == 0:
            raise PriorlabError(f"TensorRep needs non-negative integer multiplicities per rank with "
                                f"at least one copy, e.g. (5, 5) for 5 scalars + 5 vectors; got {mult!r}")
        object.__setattr__(self, "multiplicities", mult)

    @property
    def dim(self) -> int:
        return sum(m * _DIM ** r for r, m in enumerate(self.multiplicities))

    def blocks(self) -> list[tuple[int, int, int]]:
        """(offset, multiplicity, rank) of each non-empty rank."""
        out, offset = [], 0
        for rank, m in enumerate(self.multiplicities):
            if m:
                out.append((offset, m, rank))
                offset += m * _DIM ** rank
        return out

    def action(self, q: torch.Tensor) -> torch.Tensor:
        """The matrix by which an orthogonal 3x3 ``q`` acts on this representation."""
        q64 = q.double().contiguous()
        parts = [torch.kron(torch.eye(m, dtype=q.dtype), _tensor_group(q64, r).to(q.dtype))
                 for _, m, r in self.blocks()]
        return torch.block_diag(*parts)


def project_weight(weight: torch.Tensor, group: str, rep_in: TensorRep, rep_out: TensorRep) -> torch.Tensor:
    """P_G W: the orthogonal projection of a (rep_out.dim, rep_in.dim) matrix onto G-equivariant maps."""
    check_tensor(weight, "weight", who="project_weight", shape=(rep_out.dim, rep_in.dim), dtype="float")
    rows = []
    for o_off, o_m, o_r in rep_out.blocks():
        d_out = _DIM ** o_r
        cols = []
        for i_off, i_m, i_r in rep_in.blocks():
            d_in = _DIM ** i_r
            block = weight[o_off:o_off + o_m * d_out, i_off:i_off + i_m * d_in]
            block = block.reshape(o_m, d_out, i_m, d_in).permute(0, 2, 1, 3).reshape(o_m, i_m, -1)
            proj = block_projector(get_group(group).name, o_r, i_r).to(weight)
            block = (block @ proj).reshape(o_m, i_m, d_out, d_in).permute(0, 2, 1, 3)
            cols.append(block.reshape(o_m * d_out, i_m * d_in))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows, dim=0)


def project_bias(bias: torch.Tensor, group: str, rep_out: TensorRep) -> torch.Tensor:
    """P_G b: a bias is a map from the trivial (scalar) representation."""
    check_tensor(bias, "bias", who="project_bias", shape=(rep_out.dim,), dtype="float")
    return project_weight(bias[:, None], group, TensorRep((1,)), rep_out)[:, 0]


class SoftEquivariantLinear(nn.Linear):
    """A linear map between tensor representations, free (soft) or exactly equivariant.

    ``exact=None`` (default) leaves the weights free: penalise them with :func:`per_penalties`.
    ``exact="o3"`` computes with ``P_G W`` and ``P_G b`` (the layer is then G-equivariant for any
    raw parameters; the EMLP baseline).
    """

    def __init__(self, rep_in: TensorRep, rep_out: TensorRep, *, exact: str | None = None):
        super().__init__(rep_in.dim, rep_out.dim)
        self.rep_in, self.rep_out = rep_in, rep_out
        self.exact = None if exact is None else get_group(exact).name

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.exact is None:
            return self.weight, self.bias
        return (project_weight(self.weight, self.exact, self.rep_in, self.rep_out),
                project_bias(self.bias, self.exact, self.rep_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.effective()
        return nn.functional.linear(x, weight, bias)

    def violations(self, groups: tuple[str, ...]) -> torch.Tensor:
        """0.5 ||W - P_g W||^2 + 0.5 ||b - P_g b||^2 for each group g, as one tensor.

        The residual (I - P_g) acts on each block of W and b gathered by precomputed indices: a
        few small batched matmuls instead of rebuilding the projected matrix. The residual form
        (not ||W||^2 - ||P W||^2) keeps tiny violations exact enough to compare between groups.
        """
        weight, bias = self.effective()
        flat = torch.cat([weight.reshape(-1), bias])
        total = flat.new_zeros(len(groups))
        for index, residual in self._plan(tuple(groups), flat.dtype):
            block = flat[index]  # (copies, d)
            total = total + torch.einsum("nd,gde->gne", block, residual).pow(2).sum((1, 2))
        return 0.5 * total

    def _plan(self, groups: tuple[str, ...], dtype: torch.dtype) -> list:
        key = (groups, dtype)
        plans = self.__dict__.setdefault("_plans", {})
        if key not in plans:
            n_cols, n_weight = self.rep_in.dim, self.rep_out.dim * self.rep_in.dim
            plan = []
            for o_off, o_m, o_r in self.rep_out.blocks():
                d_out = _DIM ** o_r
                rows = o_off + torch.arange(o_m * d_out).reshape(o_m, 1, d_out, 1)
                ins = [(i_off, i_m, i_r, n_cols, 0) for i_off, i_m, i_r in self.rep_in.blocks()]
                ins.append((0, 1, 0, 1, n_weight))  # the bias: a map from one scalar
                for i_off, i_m, i_r, width, start in ins:
                    d_in = _DIM ** i_r
                    cols = i_off + torch.arange(i_m * d_in).reshape(1, i_m, 1, d_in)
                    index = start + rows * width + cols
                    eye = torch.eye(d_out * d_in, dtype=torch.float64)
                    residual = torch.stack([eye - block_projector(get_group(g).name, o_r, i_r)
                                            for g in groups]).to(dtype)
                    plan.append((index.reshape(o_m * i_m, d_out * d_in), residual))
            plans[key] = plan
        return plans[key]

    def extra_repr(self) -> str:
        return (f"rep_in={self.rep_in.multiplicities}, rep_out={self.rep_out.multiplicities}, "
                f"exact={self.exact}")


def per_penalties(model: nn.Module, groups) -> dict[str, torch.Tensor]:
    """R_i for each group name: the summed violation of every SoftEquivariantLinear in ``model``."""
    layers = [m for m in model.modules() if isinstance(m, SoftEquivariantLinear)]
    if not layers:
        raise PriorlabError("per_penalties: the model has no SoftEquivariantLinear layer; build it "
                            "from priorlab.nn.soft_equivariance layers (e.g. GatedTensorMLP)")
    if isinstance(groups, str) or not isinstance(groups, Iterable):
        raise PriorlabError(f"per_penalties: groups must be a sequence of group names, e.g. "
                            f"('o3', 'o2_z'), got {describe(groups)}")
    names = tuple(get_group(g).name for g in groups)
    if not names:
        raise PriorlabError("per_penalties: give at least one group, e.g. groups=('o3', 'o2_z')")
    total = sum(layer.violations(names) for layer in layers)
    if not bool(torch.isfinite(total.detach()).all()):
        raise PriorlabError("per_penalties: the penalties are not finite: a layer's weight or bias "
                            "holds NaN or infinite values, or is too large to square")
    return dict(zip(names, total.unbind()))


@torch.no_grad()
def project_model_(model: nn.Module, group: str) -> nn.Module:
    """Replace every SoftEquivariantLinear's weight and bias by their projection onto ``group``, in place.

    Starting a soft model on an exactly equivariant point (all penalties of supergroups zero)
    lets the data, not the random initialisation, decide which symmetries to break.
    """
    layers = [m for m in model.modules() if isinstance(m, SoftEquivariantLinear)]
    if not layers:
        raise PriorlabError("project_model_: the model has no SoftEquivariantLinear layer")
    name = get_group(group).name
    for layer in layers:
        layer.weight.copy_(project_weight(layer.weight, name, layer.rep_in, layer.rep_out))
        layer.bias.copy_(project_bias(layer.bias, name, layer.rep_out))
    return model


@torch.no_grad()
def per_decay_(model: nn.Module, strengths: dict[str, float], lr: float) -> None:
    """The penalty's step taken outside the optimiser: W <- W - lr lambda_g (W - P_g W) per group.

    With Adam the penalty's gradient otherwise enters the per-parameter normalisation and, at
    the official strength 100, shrinks the task's steps (the AdamW argument for decoupled weight
    decay). Each factor ``lr * lambda_g`` is capped at 1 (a full projection).
    """
    for layer in (m for m in model.modules() if isinstance(m, SoftEquivariantLinear)):
        for name, strength in strengths.items():
            rate = min(1.0, float(lr) * float(strength))
            if rate <= 0:
                continue
            layer.weight.sub_(rate * (layer.weight - project_weight(layer.weight, name, layer.rep_in,
                                                                      layer.rep_out)))
            layer.bias.sub_(rate * (layer.bias - project_bias(layer.bias, name, layer.rep_out)))


class AutoStrength:
    """Strengths lambda_i tuned from the relative violation (official ``AdjustEquiv``).

    Call :meth:`observe` with the penalties during the last epochs of the warm-up (it keeps each
    group's smallest value), then :meth:`adjust` once: every non-zero strength is divided by
    ``(R_i / min_j R_j) ** power``, the minimum over groups with a non-zero strength.
    """

    def __init__(self, initial: dict[str, float], power: float = 2.0):
        if not initial:
            raise PriorlabError("AutoStrength needs one initial strength per group, e.g. {'o3': 100.0}")
        self.strengths = {get_group(k).name: check_number(v, f"strength of {k}", who="AutoStrength", low=0)
                          for k, v in initial.items()}
        self.power = check_number(power, "power", who="AutoStrength", low=0)
        self.observed: dict[str, float] = {}
        self.adjusted = False

    def observe(self, penalties: dict[str, torch.Tensor | float]) -> None:
        for name, value in penalties.items():
            value = float(value)
            if name not in self.strengths or not math.isfinite(value):
                raise PriorlabError(f"AutoStrength.observe: unknown group {name!r} or non-finite {value}")
            self.observed[name] = min(value, self.observed.get(name, math.inf))

    def adjust(self) -> dict[str, float]:
        active = [n for n, s in self.strengths.items() if s > 0]
        if self.adjusted or any(n not in self.observed for n in active):
            raise PriorlabError("AutoStrength.adjust: call observe() for every group first, and "
                                "adjust only once")
        floor = max(min(self.observed[n] for n in active), 1e-30) if active else 1.0
        for n in active:
            self.strengths[n] /= (max(self.observed[n], floor) / floor) ** self.power
        self.adjusted = True
        return dict(self.strengths)

    def state_dict(self) -> dict:
        return {"strengths": dict(self.strengths), "observed": dict(self.observed),
                "adjusted": self.adjusted, "power": self.power}

    def load_state_dict(self, state: dict) -> None:
        self.strengths, self.observed = dict(state["strengths"]), dict(state["observed"])
        self.adjusted, self.power = bool(state["adjusted"]), float(state["power"])


class GatedTensorBlock(nn.Module):
    """SoftEquivariantLinear then an O(3)-equivariant nonlinearity on (scalars, vectors, matrices).

    The linear map produces c0 + c1 + 2 c2 scalars, c1 + c2 vectors and c2 matrices. Scalars pass
    through SiLU; each kept vector and matrix is scaled by the sigmoid of its own gate scalar
    (EMLP's gated nonlinearity); and each matrix gets ``s u u^T`` added, a scalar times the outer
    product of an extra vector (a small stand-in for EMLP's bilinear layer: targets such as the
    inertia tensor sum m r r^T are products of features, which gates alone reach only slowly).
    """

    def __init__(self, rep_in: TensorRep, channels: tuple[int, int, int], *, exact: str | None = None):
        super().__init__()
        c0, c1, c2 = channels
        self.channels = channels
        self.linear = SoftEquivariantLinear(rep_in, TensorRep((c0 + c1 + 2 * c2, c1 + c2, c2)),
                                            exact=exact)
        self.rep_out = TensorRep(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = self.channels
        h = self.linear(x)
        n, n_s = h.shape[0], c0 + c1 + 2 * c2
        s, rest = h[:, :n_s], h[:, n_s:]
        v = rest[:, :3 * (c1 + c2)].reshape(n, c1 + c2, 3)
        t = rest[:, 3 * (c1 + c2):].reshape(n, c2, 3, 3)
        vec = torch.sigmoid(s[:, c0:c0 + c1, None]) * v[:, :c1]
        u = v[:, c1:]
        gates, scales = s[:, c0 + c1:c0 + c1 + c2, None, None], s[:, c0 + c1 + c2:, None, None]
        mat = torch.sigmoid(gates) * t + scales * u[..., :, None] * u[..., None, :]
        return torch.cat([nn.functional.silu(s[:, :c0]), vec.reshape(n, -1), mat.reshape(n, -1)], 1)


class GatedTensorMLP(nn.Sequential):
    """``depth`` GatedTensorBlocks and a final SoftEquivariantLinear to ``rep_out``."""

    def __init__(self, rep_in: TensorRep, rep_out: TensorRep, channels=(16, 8, 8), depth: int = 3,
                 *, exact: str | None = None):
        if len(channels) != 3 or any(not isinstance(c, int) or c < 1 for c in channels):
            raise PriorlabError(f"channels must be three positive ints (scalars, vectors, matrices), "
                                f"got {channels!r}")
        if not isinstance(depth, int) or depth < 1:
            raise PriorlabError(f"depth must be a positive int, got {depth!r}")
        blocks, rep = [], rep_in
        for _ in range(depth):
            blocks.append(GatedTensorBlock(rep, tuple(channels), exact=exact))
            rep = blocks[-1].rep_out
        super().__init__(*blocks, SoftEquivariantLinear(rep, rep_out, exact=exact))
        self.rep_in, self.rep_out = rep_in, rep_out
