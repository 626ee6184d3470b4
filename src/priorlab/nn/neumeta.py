"""NeuMeta: an implicit neural representation of weights that emits a network of any width.

Yang & Wang, "Neural Metamorphosis", ECCV 2024, arXiv:2410.11878; official code
github.com/Adamdad/neumeta (``neumeta/hypermodel.py``, ``neumeta/utils/hypernet_utils.py``,
``smooth/permute.py``). One hypernetwork ``F`` maps the coordinate of a weight inside a network
of a given size to the weight's value (paper, Sec. 3):

    w[k, i, j] = F_k(gamma(k / K, i / out_k, j / in_k, K, out_k, in_k)) / in_k

``k`` is the parameter tensor (weight or bias) of the target, ``i, j`` its row and column,
``out_k x in_k`` its shape at the requested width, ``gamma`` sinusoidal positional encoding and
``F_k`` a residual MLP of its own per tensor (the official ``NeRF_ResMLP_Compose``). Dividing by
the fan-in ``in_k`` keeps each unit's pre-activation on one scale whatever the width, so the same
function serves narrow and wide networks. Asking for other shapes gives another network of the
family, also at widths never seen in training.

Two things make the weight manifold smooth enough to learn (paper, Sec. 3.3):

- intra-model: :func:`smooth_permutation` reorders the hidden units of a trained network along a
  shortest Hamiltonian path of their weight vectors (L1 distance), so neighbouring coordinates
  hold similar weights; the network computes the same function after it;
- cross-model: uniform noise on the row/column coordinates while training
  (``coordinate_noise``), so networks of neighbouring widths read nearby values.

Training (see the reproduction ``p036_neumeta``) samples a width per batch
(:func:`sample_width`), generates that network's weights, and minimises its task loss plus a
small L2 penalty on the weights and, at the pretrained width, the reconstruction loss
:func:`weighted_regression_loss` against the permuted pretrained weights.

Trailing "kernel" dimensions of a tensor get no coordinate: the official code emits a conv
kernel (``k x k`` values) per (out, in) channel pair and divides by the number of input
channels. The target family here, :class:`MorphableMLP`, uses this for its input layer: the
``in_features`` inputs (pixels) form one input channel's kernel, so each hidden unit's whole
receptive field is emitted at once from its coordinate; every hidden layer has the requested
width.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.models import mlp
from priorlab.validation import check_number, check_tensor

# raw coordinate layout, as in the official sample_coordinates: tensor id, row, column, number of
# tensors, rows, columns
COORD_DIM = 6


def _check_shapes(shapes, who: str) -> list[tuple[int, ...]]:
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence) or not shapes:
        raise PriorlabError(f"{who}: shapes must be a non-empty list of tensor shapes such as "
                            f"[(32, 196), (32,)], got {shapes!r}")
    checked = []
    for shape in shapes:
        shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (shape,)
        if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise PriorlabError(f"{who}: every shape must be (rows,), (rows, columns) or (rows, "
                                f"columns, *kernel) of positive ints, got {shape!r}")
        checked.append(shape)
    return checked


def weight_coordinates(shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Raw coordinates of the (row, column) pairs of tensors with ``shapes``: one
    ``(rows * columns, 6)`` float tensor per shape with rows ``(k, i, j, K, rows, columns)`` in
    row-major order (``j = 0`` and ``columns = 1`` for a bias). Trailing kernel dimensions get
    no coordinate: the INR emits a whole kernel per pair."""
    shapes = _check_shapes(shapes, "weight_coordinates")
    count = len(shapes)
    coords = []
    for k, shape in enumerate(shapes):
        rows, cols = (shape[0], 1) if len(shape) == 1 else shape[:2]
        i, j = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        fixed = torch.tensor([k, count, rows, cols], dtype=torch.float32)
        c = torch.empty(rows * cols, COORD_DIM)
        c[:, 0], c[:, 1], c[:, 2] = fixed[0], i.flatten().float(), j.flatten().float()
        c[:, 3:] = fixed[1:]
        coords.append(c)
    return coords


class PositionalEncoding(nn.Module):
    """``x -> [x, sin(2^f pi x), cos(2^f pi x) for f < num_freqs]`` per input dimension."""

    def __init__(self, num_freqs: int):
        super().__init__()
        self.num_freqs = check_number(num_freqs, "num_freqs", who="PositionalEncoding", low=0,
                                      integer=True)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(self.num_freqs).float(),
                             persistent=False)

    def out_features(self, in_features: int) -> int:
        return in_features * (1 + 2 * self.num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = (x.unsqueeze(-1) * self.freqs).flatten(-2)
        return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class ResidualMLP(nn.Module):
    """Linear-ReLU, then ``num_layers - 1`` blocks ``x + s_b relu(W_b x)`` with a learnable
    scale ``s_b`` per block (initial ``residual_scale``), then a linear head (the official
    ``NeRF_MLP_Residual_Scaled``)."""

    def __init__(self, in_features: int, hidden: int, out_features: int, num_layers: int,
                 residual_scale: float):
        super().__init__()
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(num_layers - 1))
        self.scales = nn.Parameter(torch.full((num_layers - 1,), float(residual_scale)))
        self.out = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for block, scale in zip(self.blocks, self.scales):
            h = h + scale * F.relu(block(h))
        return self.out(h)


class NeuMeta(nn.Module):
    """The weight INR: ``forward(shapes)`` returns weight tensors of those shapes.

    Args:
        num_tensors: how many parameter tensors the target family has (weights and biases
            count separately); each gets its own residual MLP, as in the official code.
        hidden, num_layers, num_freqs, residual_scale: size of each MLP, the number of
            positional-encoding frequencies and the initial residual scale (official LeNet /
            Fashion-MNIST config: 256, 8, 16, 0.1).
        norm: the scale of the size entries (number of tensors, rows, columns) fed to the MLP
            as ``size / norm``; the official code uses the largest trained width.
        kernel_sizes: values emitted per (row, column) coordinate of each tensor (default 1;
            ``MorphableMLP.kernel_sizes`` for that family).
    """

    def __init__(self, num_tensors: int, *, hidden: int = 256, num_layers: int = 8,
                 num_freqs: int = 16, residual_scale: float = 0.1, norm: float = 32.0,
                 kernel_sizes: Sequence[int] | None = None):
        super().__init__()
        who = "NeuMeta"
        self.num_tensors = check_number(num_tensors, "num_tensors", who=who, low=1, integer=True)
        hidden = check_number(hidden, "hidden", who=who, low=1, integer=True)
        num_layers = check_number(num_layers, "num_layers", who=who, low=1, integer=True)
        check_number(residual_scale, "residual_scale", who=who)
        self.norm = check_number(norm, "norm", who=who, low=0, low_open=True,
                                 hint="pass the largest width trained, e.g. norm=32")
        if kernel_sizes is None:
            kernel_sizes = [1] * self.num_tensors
        kernel_sizes = list(kernel_sizes)
        if len(kernel_sizes) != self.num_tensors or not all(
                isinstance(k, int) and k >= 1 for k in kernel_sizes):
            raise PriorlabError(f"NeuMeta: kernel_sizes must hold one positive int per tensor "
                                f"({self.num_tensors}), got {kernel_sizes!r}")
        self.kernel_sizes = kernel_sizes
        self.encoding = PositionalEncoding(num_freqs)
        features = self.encoding.out_features(COORD_DIM)
        self.nets = nn.ModuleList(ResidualMLP(features, hidden, k, num_layers, residual_scale)
                                  for k in kernel_sizes)
        for module in self.modules():  # the official weights_init_uniform_relu
            if isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound)

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """Raw ``(n, 6)`` coordinates -> network input: indices as fractions of their range,
        sizes divided by ``norm``, then positional encoding."""
        rel = coords[:, :3] / coords[:, 3:]
        return self.encoding(torch.cat([rel, coords[:, 3:] / self.norm], dim=1))

    def forward(self, shapes: Sequence[tuple[int, ...]], *, coordinate_noise: float = 0.0,
                generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """Weights for a target whose parameter tensors have ``shapes`` (differentiable).

        ``coordinate_noise`` adds ``U(-noise/2, noise/2)`` to every row and column index (in
        units of one unit of the layer), the paper's cross-model smoothing; 0 at evaluation.
        The INR lives on the device of its parameters; coordinates are made on the CPU.
        """
        shapes = _check_shapes(shapes, "NeuMeta")
        if len(shapes) != self.num_tensors:
            raise PriorlabError(f"NeuMeta: built for {self.num_tensors} parameter tensors, got "
                                f"{len(shapes)} shapes; build it with num_tensors={len(shapes)}")
        for k, (shape, size) in enumerate(zip(shapes, self.kernel_sizes)):
            if math.prod(shape[2:]) != size:
                raise PriorlabError(f"NeuMeta: tensor {k} has shape {shape}, so kernels of "
                                    f"{math.prod(shape[2:])} values, but the INR emits {size}; "
                                    f"build it with kernel_sizes[{k}]={math.prod(shape[2:])}")
        noise = check_number(coordinate_noise, "coordinate_noise", who="NeuMeta", low=0)
        device = self.nets[0].scales.device
        weights = []
        for net, shape, coords in zip(self.nets, shapes, weight_coordinates(shapes)):
            if noise > 0:
                jitter = torch.rand(len(coords), 2, generator=generator) - 0.5
                coords[:, 1:3] += noise * jitter
            coords = coords.to(device)
            value = net(self.encode(coords)) / coords[:, 5:6]
            weights.append(value.reshape(shape))
        return weights


class MorphableMLP:
    """The family of MLPs ``in_features -> width (x depth) -> out_features`` (ReLU).

    :meth:`shapes` are the tensors an INR emits: ``(width, 1, in_features)`` for the input
    layer (the inputs as one channel's kernel, see the module docstring), then ``(rows,
    columns)`` weights and ``(rows,)`` biases; :attr:`kernel_sizes` goes to :class:`NeuMeta`.
    Parameter order is that of :func:`priorlab.models.mlp` (``W_1, b_1, ..., W_out, b_out``),
    so :meth:`build` materialises a concrete ``nn.Sequential`` and :meth:`parameters_of` reads
    one back in the shapes of :meth:`shapes`.
    """

    def __init__(self, in_features: int, out_features: int, depth: int = 2):
        who = "MorphableMLP"
        self.in_features = check_number(in_features, "in_features", who=who, low=1, integer=True)
        self.out_features = check_number(out_features, "out_features", who=who, low=1,
                                         integer=True)
        self.depth = check_number(depth, "depth", who=who, low=1, integer=True,
                                  hint="depth is the number of hidden layers")

    @property
    def num_tensors(self) -> int:
        return 2 * (self.depth + 1)

    @property
    def kernel_sizes(self) -> list[int]:
        return [self.in_features] + [1] * (self.num_tensors - 1)

    def _width(self, width) -> int:
        return check_number(width, "width", who="MorphableMLP", low=1, integer=True)

    def shapes(self, width: int) -> list[tuple[int, ...]]:
        width = self._width(width)
        shapes = [(width, 1, self.in_features), (width,)]
        for fan_out in [width] * (self.depth - 1) + [self.out_features]:
            shapes += [(fan_out, width), (fan_out,)]
        return shapes

    def forward(self, x: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits of the network with ``params`` (as from :meth:`shapes`) on ``x``."""
        check_tensor(x, "x", who="MorphableMLP.forward", min_ndim=2, dtype="float")
        if len(params) != self.num_tensors:
            raise PriorlabError(f"MorphableMLP.forward: expected {self.num_tensors} tensors, got "
                                f"{len(params)}")
        h = x.flatten(1)
        if h.shape[1] != self.in_features:
            raise PriorlabError(f"MorphableMLP.forward: x has {h.shape[1]} features per sample, "
                                f"the family takes {self.in_features}")
        n_layers = len(params) // 2
        for layer in range(n_layers):
            weight = params[2 * layer]
            h = F.linear(h, weight.reshape(weight.shape[0], -1), params[2 * layer + 1])
            if layer < n_layers - 1:
                h = F.relu(h)
        return h

    def build(self, width: int, params: Sequence[torch.Tensor] | None = None) -> nn.Sequential:
        """A concrete network of ``width``; with ``params`` (shapes as :meth:`shapes`), their
        detached values."""
        model = mlp(self.in_features, [self._width(width)] * self.depth, self.out_features)
        if params is not None:
            shapes = self.shapes(width)
            if [tuple(p.shape) for p in params] != shapes:
                raise PriorlabError(f"MorphableMLP.build: params have shapes "
                                    f"{[tuple(p.shape) for p in params]}, width {width} needs "
                                    f"{shapes}")
            with torch.no_grad():
                for target, value in zip(model.parameters(), params):
                    target.copy_(value.reshape(target.shape))
        return model

    def parameters_of(self, model: nn.Module) -> list[torch.Tensor]:
        """The parameters of a network of the family, as views in the shapes of :meth:`shapes`."""
        params = list(model.parameters())
        if len(params) != self.num_tensors:
            raise PriorlabError(f"MorphableMLP: the model has {len(params)} parameter tensors, "
                                f"the family has {self.num_tensors}")
        width = params[1].shape[0]
        return [p.view(shape) for p, shape in zip(params, self.shapes(width))]


def training_widths(low: int, high: int, step: int = 1) -> list[int]:
    """The widths sampled in training: ``low, low + step, ..., high`` (the official config's
    ``dimensions.range`` and ``interval``)."""
    who = "training_widths"
    low = check_number(low, "low", who=who, low=1, integer=True)
    high = check_number(high, "high", who=who, low=low, integer=True)
    step = check_number(step, "step", who=who, low=1, integer=True)
    return list(range(low, high + 1, step))


def sample_width(widths: Sequence[int], generator: torch.Generator | None = None) -> int:
    """One width drawn uniformly from ``widths`` (one per batch in training)."""
    if not isinstance(widths, Sequence) or not widths or not all(
            isinstance(w, int) and w >= 1 for w in widths):
        raise PriorlabError(f"sample_width: widths must be a non-empty list of positive ints, "
                            f"got {widths!r}")
    return int(widths[int(torch.randint(len(widths), (1,), generator=generator))])


def weighted_regression_loss(predicted: Sequence[torch.Tensor],
                             target: Sequence[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Mean over tensors of ``mean((w - w*)^2 * (|w*| + eps) / max(|w*| + eps))``: the official
    reconstruction loss, which weighs each weight by its target's magnitude."""
    if len(predicted) != len(target) or not predicted:
        raise PriorlabError(f"weighted_regression_loss: got {len(predicted)} predicted and "
                            f"{len(target)} target tensors; pass matching non-empty lists")
    losses = []
    for w, w_star in zip(predicted, target):
        if w.shape != w_star.shape:
            raise PriorlabError(f"weighted_regression_loss: shapes differ, {tuple(w.shape)} vs "
                                f"{tuple(w_star.shape)}")
        scale = w_star.abs() + eps
        losses.append(((w - w_star) ** 2 * (scale / scale.max())).mean())
    return torch.stack(losses).mean()


def _two_opt_path(order: list[int], dist: np.ndarray) -> list[int]:
    """Improve an open path by segment reversals until no reversal shortens it."""
    order = list(order)
    n = len(order)
    improved = True
    while improved:
        improved = False
        for a in range(n - 1):
            for b in range(a + 1, n):
                # reversing order[a..b] changes the edges (a-1, a) and (b, b+1)
                before = after = 0.0
                if a > 0:
                    before += dist[order[a - 1], order[a]]
                    after += dist[order[a - 1], order[b]]
                if b < n - 1:
                    before += dist[order[b], order[b + 1]]
                    after += dist[order[a], order[b + 1]]
                if after < before - 1e-9:
                    order[a:b + 1] = order[a:b + 1][::-1]
                    improved = True
    return order


def shortest_hamiltonian_path(points: torch.Tensor) -> torch.Tensor:
    """An order of the rows of ``points`` (n, d) with short total L1 length between neighbours.

    The paper's intra-model smoothing solves this shortest-Hamiltonian-path problem (the
    official code: a TSP with a dummy city at distance 0 from all, by ``fast_tsp``). Here:
    nearest-neighbour paths from every start, the shortest kept, then 2-opt on the open path.
    """
    check_tensor(points, "points", who="shortest_hamiltonian_path", ndim=2, dtype="float",
                 non_empty=True, finite=True)
    dist = torch.cdist(points.double(), points.double(), p=1).numpy()
    n = len(dist)
    best, best_len = None, math.inf
    for start in range(n):
        path, left = [start], np.ones(n, dtype=bool)
        left[start] = False
        for _ in range(n - 1):
            row = np.where(left, dist[path[-1]], np.inf)
            nxt = int(row.argmin())
            path.append(nxt)
            left[nxt] = False
        length = float(dist[path[:-1], path[1:]].sum())
        if length < best_len:
            best, best_len = path, length
    return torch.tensor(_two_opt_path(best, dist), dtype=torch.long)


def _linears(model: nn.Module) -> list[nn.Linear]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise PriorlabError("smooth_permutation: the model needs at least two nn.Linear layers "
                            "(a hidden layer to reorder)")
    if any(m.bias is None for m in linears):
        raise PriorlabError("smooth_permutation: every Linear needs a bias (the family's layers)")
    for a, b in zip(linears[:-1], linears[1:]):
        if a.out_features != b.in_features:
            raise PriorlabError(f"smooth_permutation: Linear layers must form a chain; "
                                f"{a.out_features} outputs feed {b.in_features} inputs")
    return linears


def smooth_permutation(model: nn.Module) -> nn.Module:
    """A copy of the MLP ``model`` with each hidden layer's units reordered along a shortest
    Hamiltonian path (the official ``PermutationManager``); the function is unchanged.

    A unit is described by everything attached to it: its incoming weights and bias (a row of
    ``W_l`` and ``b_l``) and its outgoing weights (a column of ``W_{l+1}``). Inputs and outputs
    of the network keep their order. Orders are computed on the original weights, then applied.
    """
    if not isinstance(model, nn.Module):
        raise PriorlabError(f"smooth_permutation: expected an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    linears = _linears(model)
    orders = []
    with torch.no_grad():
        for layer, nxt in zip(linears[:-1], linears[1:]):
            units = torch.cat([layer.weight, layer.bias.unsqueeze(1), nxt.weight.T], dim=1)
            orders.append(shortest_hamiltonian_path(units.float()))
        for layer, nxt, order in zip(linears[:-1], linears[1:], orders):
            layer.weight.copy_(layer.weight[order])
            layer.bias.copy_(layer.bias[order])
            nxt.weight.copy_(nxt.weight[:, order])
    return model


def total_variation(params: Sequence[torch.Tensor]) -> float:
    """Mean over tensors of the sum of absolute differences between neighbouring entries along
    every axis (the official ``compute_tv_loss_for_network`` with ``lambda_tv = 1``)."""
    if not params:
        raise PriorlabError("total_variation: pass at least one tensor")
    total = 0.0
    for p in params:
        p = p.detach()
        total += sum(float(p.diff(dim=d).abs().sum()) for d in range(p.ndim))
    return total / len(params)
