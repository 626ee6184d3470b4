"""Neural Scene Flow Prior (NSFP; Li, Kopf, Lucey, NeurIPS 2021, arXiv 2111.01253).

Scene flow is represented by a coordinate MLP ``f: R^3 -> R^3`` fitted at run time to one pair of
clouds by minimising a correspondence-free loss; the MLP's spectral bias is the "prior".

Faithful to the official code (github.com/Lilac-Lee/Neural_Scene_Flow_Prior, commit 370c767):

* network (``model.py`` ``Neural_Prior``): Linear 3->128, then seven Linear 128->128, each of these
  eight followed by ReLU, then Linear 128->3 (``hidden_units=128``, ``act_fn='relu'``); PyTorch's
  default ``nn.Linear`` initialisation.
* backward / cycle net (``optimization.py`` ``solver``, ``--backward_flow`` default True): a second
  net of the same shape, created as ``copy.deepcopy`` of the forward net (same initial weights).
* loss: ``Chamfer(P2, P1 + f(P1)) + Chamfer(P1' , P1)`` with ``P1' = (P1 + f(P1)) - g(P1 + f(P1))``
  (note the MINUS sign, and no ``detach``: the cycle term also trains ``f``). Chamfer is the truncated
  bidirectional squared-distance Chamfer of ``loss.py`` (threshold 2 m^2, see
  :func:`priorlab.sceneflow.losses.chamfer_loss`).
* optimiser (``config.py`` defaults): Adam, lr 0.008, weight decay 1e-4 (set per parameter group,
  i.e. L2 added to the gradient, not AdamW), up to 5000 iterations, early stopping with patience 100
  and min_delta 1e-4 (``utils.py`` ``EarlyStopping``: stop once the loss has not gone below
  ``best - min_delta`` for ``patience`` steps); the flow of the lowest-loss iterate is kept; 2048
  points per cloud (``--num_points``).

Deviations (deliberate):

* fresh, seeded initialisation for every pair; the official script creates the network once and
  warm-starts every following sample from the previous sample's solution (and the backward net from
  the warm-started forward net), which makes results depend on dataset order;
* nearest neighbours from an exact CPU k-d tree instead of pytorch3d's CUDA ``knn_points``;
* ``points=N`` samples each cloud uniformly at random; the official Argoverse/nuScenes loaders draw
  80 % of the points from annotated (moving) objects using ground-truth tracks, which leaks labels;
* the fitted field is evaluated at every point of ``pc1`` afterwards (the official code only reports
  flow on the sampled points);
* both clouds are centred on the mean of the fitted ``pc1`` points (in float64) before the fit, and
  the field subtracts the same centre from its queries (``estimate_flow(centre=True)``, the default).
  The official ``data.py`` centres this way only for FlyingThings3D and feeds KITTI / Argoverse /
  nuScenes sweeps in the sensor frame; centring makes the fit exactly translation-equivariant and
  keeps map / UTM coordinates (1 km - 1e6 m from the origin) usable. It is not a no-op near the
  origin: shifting the MLP's input is a reparametrisation of its first-layer bias, so results in
  the sensor frame differ from uncentred fits like another seed would (``centre=False`` restores
  the official sensor-frame behaviour);
* a fit whose every Chamfer term is beyond the truncation at the start (loss exactly 0, zero
  gradient) raises instead of "converging" at once; if the fit later reaches such a state, it stops
  there with ``stop_reason="degenerate"`` and returns the best earlier iterate (the official code
  would keep the meaningless loss-0 iterate as the best one).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.sceneflow.losses import KDIndex, _chamfer

__all__ = ["FlowMLP", "NSFP_DEFAULTS", "NSFPProblem", "make_field"]

NSFP_DEFAULTS = dict(
    lr=8e-3,
    max_iters=5000,
    patience=100,
    min_delta=1e-4,
    weight_decay=1e-4,
    hidden=128,
    layers=8,
    activation="relu",
    backward=True,
    truncate=2.0,
    init="torch",
)


class FlowMLP(nn.Module):
    """Coordinate MLP: ``layers`` hidden Linear+activation blocks of width ``hidden``, then Linear -> 3.

    ``layers=8, hidden=128`` is NSFP's ``Neural_Prior`` and FNSF's default ``layer_size=8``.
    ``init="torch"`` keeps PyTorch's default init (NSFP); ``"xavier"`` = Xavier-uniform weights and
    zero biases (FNSF ``--init_weight``).
    """

    def __init__(self, hidden: int = 128, layers: int = 8, activation: str = "relu", init: str = "torch"):
        super().__init__()
        if activation not in ("relu", "sigmoid"):
            raise PriorlabError(f"unknown activation {activation!r}; use 'relu' or 'sigmoid'")
        if init not in ("torch", "xavier"):
            raise PriorlabError(f"unknown init {init!r}; use 'torch' or 'xavier'")
        if not isinstance(hidden, int) or hidden < 1 or not isinstance(layers, int) or layers < 1:
            raise PriorlabError(
                f"hidden and layers must be positive integers, got hidden={hidden!r}, layers={layers!r}"
            )
        act = nn.ReLU if activation == "relu" else nn.Sigmoid
        mods = []
        width = 3
        for _ in range(layers):
            mods += [nn.Linear(width, hidden), act()]
            width = hidden
        mods.append(nn.Linear(width, 3))
        self.net = nn.Sequential(*mods)
        if init == "xavier":
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_field(net: nn.Module, state: list[torch.Tensor] | None, device, chunk: int = 65536):
    """A numpy callable ``query(points (M,3)) -> flow (M,3) float32`` from a net and a parameter snapshot."""
    frozen = copy.deepcopy(net).to(device)
    if state is not None:
        with torch.no_grad():
            for p, s in zip(frozen.parameters(), state):
                p.copy_(s)
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)

    def query(points) -> np.ndarray:
        arr = np.asarray(points)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise PriorlabError(f"field query points must have shape (M, 3), got {arr.shape}; pass xyz only")
        if arr.dtype.kind != "f":
            raise PriorlabError(f"field query points have dtype {arr.dtype}; convert to float32")
        if len(arr) == 0:
            return np.zeros((0, 3), np.float32)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out = []
        with torch.no_grad():
            for c in x.split(chunk):
                out.append(frozen(c.to(device)).cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    return query


class NSFPProblem:
    """One NSFP fit: forward net, optional cycle net, truncated-Chamfer loss, Adam."""

    def __init__(self, pc1: torch.Tensor, pc2: torch.Tensor, opts: dict, lr: float, seed: int, device):
        self.pc1 = pc1
        self.pc2 = pc2
        self.truncate = opts["truncate"]
        self.backward = bool(opts["backward"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = FlowMLP(opts["hidden"], opts["layers"], opts["activation"], opts["init"]).to(device)
        groups = [{"params": list(self.net.parameters())}]
        self.net_inv = None
        if self.backward:
            self.net_inv = copy.deepcopy(self.net)  # official: same initial weights as the forward net
            groups.append({"params": list(self.net_inv.parameters())})
        self.optimizer = torch.optim.Adam(groups, lr=lr, weight_decay=opts["weight_decay"])
        cpu = pc1.device.type == "cpu"
        self.idx_pc2 = KDIndex(pc2) if cpu else None
        self.idx_pc1 = KDIndex(pc1) if (cpu and self.backward) else None
        self.device = device
        # share of the data term's Chamfer terms within the truncation at the last loss (the cycle
        # term is a regulariser: it can stay small while the flow fits nothing)
        self.kept_share = 1.0

    def loss(self) -> torch.Tensor:
        counts = [0, 0]
        deformed = self.pc1 + self.net(self.pc1)
        loss = _chamfer(deformed, self.pc2, self.truncate, q_index=self.idx_pc2, counts=counts)
        if self.backward:
            back = deformed - self.net_inv(deformed)
            loss = loss + _chamfer(back, self.pc1, self.truncate, q_index=self.idx_pc1)
        self.kept_share = counts[0] / counts[1]
        return loss

    def snapshot(self):
        return [p.detach().clone() for p in self.net.parameters()]

    def field(self, state):
        return make_field(self.net, state, self.device)
