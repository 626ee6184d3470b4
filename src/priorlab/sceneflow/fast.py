"""Fast Neural Scene Flow (FNSF; Li, Zheng, Ferroni, Pontes, Lucey, ICCV 2023, arXiv 2304.09121).

Same coordinate-MLP flow field as NSFP, but the Chamfer loss (dominated by nearest-neighbour search)
is replaced by a distance transform (DT) of the target cloud precomputed once on a voxel grid and
queried by trilinear interpolation: ``loss = mean_i DT(p1_i + f(p1_i))``. No backward/cycle network.

Defaults read from the official code (github.com/Lilac-Lee/FastNSF, ``optimization.py``, and the
README's Argoverse "full point cloud" command):

* network ``Neural_Prior(layer_size=8, hidden_units=128, act_fn='relu')`` -- identical shape to NSFP;
  ``--init_weight`` (used in every README command): Xavier-uniform weights, zero biases;
* optimiser: ``torch.optim.Adam(lr, weight_decay=0)``, as ``optimization.py`` has it from commit
  a40aac2 on (the commit that also added the Waymo preprocessing); the first release (8f0ca3f) used
  ``SGD(lr, momentum=0, weight_decay=1e-4)``, still available as ``optimizer="sgd",
  weight_decay=1e-4``. README full-cloud runs use ``--lr 0.008 --earlystopping --early_patience 10
  --early_min_delta 0.001`` and ``--iters 5000`` (8,192-point runs: lr 0.01, patience 5);
* DT grid: ``--grid_factor 10`` i.e. 0.1 m cells, bounds = bounding box of both clouds, floored /
  ceiled to the grid with one extra cell of margin; the DT is built on the target (second) cloud;
* the lowest-loss iterate's flow is reported.

Deviations: the DT is the exact Euclidean transform of the occupancy grid (SciPy) instead of
FastGeodis' one-pass raster approximation; a memory guard refuses grids above ``max_grid_bytes``
(default 1 GiB) instead of exhausting memory; fresh seeded initialisation per pair (the official
script re-initialises too when ``--init_weight`` is given); ``points=N`` samples each cloud
independently (the official script uses the same random indices for both clouds); both clouds are
centred on the fitted ``pc1`` points' mean before the grid and the MLP see them (``centre=True``, see
:mod:`priorlab.sceneflow.estimate`), which moves the grid's vertices relative to the points, so
results near the origin differ slightly from uncentred fits (``centre=False``).
"""

from __future__ import annotations

import torch

from priorlab.errors import PriorlabError
from priorlab.sceneflow.losses import DistanceTransform
from priorlab.sceneflow.nsfp import FlowMLP, make_field

__all__ = ["FAST_DEFAULTS", "FastProblem"]

FAST_DEFAULTS = dict(
    lr=8e-3,
    max_iters=5000,
    patience=10,
    min_delta=1e-3,
    weight_decay=0.0,
    momentum=0.0,
    optimizer="adam",
    hidden=128,
    layers=8,
    activation="relu",
    init="xavier",
    voxel_size=0.1,
    max_grid_bytes=1 << 30,
)


class FastProblem:
    """One FNSF fit: a flow MLP trained on the distance-transform loss of the target cloud."""

    def __init__(self, pc1: torch.Tensor, pc2: torch.Tensor, opts: dict, lr: float, seed: int, device):
        self.pc1 = pc1
        self.dt = DistanceTransform(
            pc2,
            voxel_size=opts["voxel_size"],
            extra_points=pc1,
            max_bytes=opts["max_grid_bytes"],
            device=device,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = FlowMLP(opts["hidden"], opts["layers"], opts["activation"], opts["init"]).to(device)
        params = list(self.net.parameters())
        name = opts["optimizer"]
        if name == "adam":
            if opts["momentum"] != 0:
                raise PriorlabError(
                    f"momentum={opts['momentum']} applies to optimizer='sgd' only; Adam (the official "
                    "FastNSF optimiser) has no momentum option here"
                )
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=opts["weight_decay"])
        elif name == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=lr, momentum=opts["momentum"], weight_decay=opts["weight_decay"]
            )
        else:
            raise PriorlabError(
                f"unknown optimizer {name!r} for method 'fast'; use 'adam' (official) or 'sgd' "
                "(FastNSF's first release)"
            )
        self.device = device

    def loss(self) -> torch.Tensor:
        return self.dt(self.pc1 + self.net(self.pc1)).mean()

    def snapshot(self):
        return [p.detach().clone() for p in self.net.parameters()]

    def field(self, state):
        return make_field(self.net, state, self.device)

    def info(self) -> dict:
        return {
            "grid_shape": self.dt.shape,
            "grid_bytes": self.dt.nbytes,
            "grid_build_bytes_estimate": self.dt.build_bytes_estimate,
        }
