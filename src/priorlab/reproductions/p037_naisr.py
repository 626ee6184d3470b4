"""Paper 37, NAISR: an atlas deformed by additive per-covariate networks evolves shapes along
covariates better than one conditional SDF, and reconstructs new shapes as well.

Data (:func:`priorlab.fields.sdf.tube_family`): a capsule warped by three known covariates in
[-1, 1] (length, thickness, bend; their displacements add up, as in the paper's Starman data)
and two hidden individual variations (sway, bulge) that only a per-shape code can explain. Each
seed draws its own shapes: ``n_train`` training shapes, ``n_test`` new shapes (new covariates
and new individual variations) and ``n_evolution`` population-trend targets (new covariate
values inside [-0.8, 0.8]^3, no individual variation). Signed distances are exact up to the
dense surface sampling (see :func:`~priorlab.fields.sdf.sample_sdf`).

Both arms are auto-decoders trained the same way (official ``loss_pointcloud_sdf`` terms:
surface, normal, off-surface L1, eikonal; code regularisation; the same terms again with z = 0,
the official "z padding"), with Adam, the same learning rates, steps and samples, and the same
parameter count: ``naisr`` is :class:`~priorlab.nn.naisr.NAISR` (template SIREN + one SIREN
displacement network per covariate), ``conditional_sdf`` one wider SIREN on ``[p, c, z]``.
Metrics (Chamfer distance: mean nearest-neighbour distance both ways, summed, between 2,000
points on the marching-cubes surface of the prediction and 2,000 on the true surface):

- ``evolution_chamfer``: the model at z = 0 and the target's covariates vs the target shape;
- ``reconstruction_chamfer``: codes of the new shapes fitted at test time with the network frozen
  (official ``reconstruct.py``), covariates known;
- ``transfer_chamfer``: the same fitted code at other covariates vs the same individual there.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from priorlab.errors import did_you_mean
from priorlab.fields import chamfer_distance
from priorlab.fields.sdf import Shape, extract_surface, grid_points, sample_sdf, tube_family
from priorlab.harness.claim import Budget, Claim, Comparison, Guard, RunOutput, Untested
from priorlab.nn.naisr import NAISR, ConditionalSDF, count_parameters, fit_codes, sdf_loss_terms
from priorlab.seed import seed_everything

ARMS = ("naisr", "conditional_sdf")

_COMMON = {"n_train": 24, "n_test": 6, "n_evolution": 6, "evolution_range": 0.8,
           "latent_dim": 8, "hidden": 32, "depth": 3, "w0": 30.0,
           "lr": 1e-4, "code_lr": 1e-3, "code_reg": 0.02,
           "n_surface": 32, "n_points": 64, "fit_steps": 100, "fit_lr": 5e-3,
           "sdf_grid": 64, "dense": 30000, "truth_grid": 64, "grid": 40, "n_chamfer": 2000,
           "curve_every": 50}

CLAUSE_EVOLUTION = ("covariate-driven shape evolution (the population trend at held-out "
                    "covariate values) is more accurate than with a single conditional SDF")
CLAUSE_RECONSTRUCTION = "new shapes are reconstructed at least as accurately (Chamfer)"
CLAUSE_TRANSFER = ("shape transfer (one individual predicted at other covariates) is more "
                   "accurate than with a single conditional SDF")
CLAUSE_DISENTANGLED = "each covariate's effect is a separate, interpretable displacement field"
CLAUSE_REAL = "the gains hold on real 3-D medical shapes (hippocampi, airways)"

CLAIM = Claim(
    seed_id=37,
    method="naisr",
    statement=("Describing shapes as one atlas SDF deformed by additive, per-covariate "
               "displacement networks (NAISR) reconstructs new shapes as well as a single "
               "conditional SDF, and predicts shapes along covariates - the population trend "
               "at new covariate values and an individual transferred to other covariates - "
               "more accurately, with each covariate's effect disentangled."),
    setting={
        "smoke": ("4 training shapes, 3 steps, 12^3 evaluation grid; checks that the pipeline "
                  "runs."),
        "full": ("Tube family (priorlab.fields.sdf.tube_family): 3 known covariates, 2 hidden "
                 "variations; 24 training shapes, 6 new shapes to reconstruct and transfer, 6 "
                 "population-trend targets, all redrawn per seed. SIRENs (w0 30): NAISR = "
                 "template 3-32-32-32-1 + three 12-32-32-32-3 displacement networks (10,154 "
                 "parameters); baseline = one 14-h-h-h-1 SIREN with h chosen for the same count "
                 "(10,185). 8-d codes (max norm 1). Every step: all 24 shapes, 32 surface + 64 "
                 "off-surface samples each, with their codes and with z = 0; Adam lr 1e-4 "
                 "(network) / 1e-3 (codes), 800 steps; official loss weights / 1e2. Test-time "
                 "codes: 100 Adam steps (lr 5e-3, / 10 halfway) on 256 surface + 512 "
                 "near-surface samples per shape. Surfaces by marching cubes on a 40^3 grid "
                 "over [-1, 1]^3 (truth: 64^3); Chamfer on 2,000 + 2,000 points. No "
                 "hyperparameter is tuned for either arm (both use the same fixed values)."),
    },
    metric="evolution_chamfer",
    higher_is_better=False,
    arms=ARMS,
    # min_effect 0.01: a fifth of a 40^3 grid cell (0.051) and ~5% of the tube's radius; smaller
    # differences are within the marching-cubes and 2,000-point sampling error of the metric.
    comparisons=(
        Comparison(method="naisr", baseline="conditional_sdf", kind="superiority",
                   min_effect=0.01, clause=CLAUSE_EVOLUTION),
    ),
    guards=(
        # margin 0.01, the same metric step as above: "as well" means within it
        Guard(metric="reconstruction_chamfer", higher_is_better=False, kind="non-inferiority",
              margin=0.01, clause=CLAUSE_RECONSTRUCTION),
        # transfer is claimed superior ("superior real-data transfer"); any gain counts
        Guard(metric="transfer_chamfer", higher_is_better=False, kind="superiority",
              min_effect=0.0, clause=CLAUSE_TRANSFER),
    ),
    clauses=(CLAUSE_EVOLUTION, CLAUSE_RECONSTRUCTION, CLAUSE_TRANSFER, CLAUSE_DISENTANGLED,
             CLAUSE_REAL),
    untested=(
        Untested(CLAUSE_DISENTANGLED, "true by construction of NAISR (d_k depends on c_k only; "
                                      "tests/test_naisr.py checks it); the baseline has no "
                                      "per-covariate field to compare with"),
        Untested(CLAUSE_REAL, "no ADNI / airway data offline and no GPU; a synthetic 3-D tube "
                              "family with additive covariate effects stands in"),
    ),
    budget=Budget("epochs", ours=800, paper=3100,
                  note=("one step here sees every training shape, so steps = epochs; the official "
                        "airway config trains 3,100 epochs (batch 64 shapes, 750 samples each, "
                        "width 256) on GPU")),
    tiers={
        "smoke": {**_COMMON, "n_train": 4, "n_test": 2, "n_evolution": 2, "steps": 3,
                  "fit_steps": 2, "sdf_grid": 16, "dense": 2000, "truth_grid": 16, "grid": 12,
                  "n_chamfer": 200, "curve_every": 1},
        "full": {**_COMMON, "steps": 800},
    },
    seeds={"smoke": 2, "full": 5},
    # metric step: a tenth of the 40^3 evaluation grid's cell (0.051)
    resolution={"evolution_chamfer": 0.005, "reconstruction_chamfer": 0.005,
                "transfer_chamfer": 0.005},
    paper_value=("Tables of CD / EMD / HD on Starman, ADNI hippocampi and pediatric airways "
                 "(not retrieved here as numbers); the abstract reports excellent reconstruction "
                 "with interpretability, and better transfer / evolution on the real data."),
    curves=("train_loss",),
    extra_metrics=("reconstruction_chamfer", "transfer_chamfer", "final_loss", "parameters"),
)


def _tensors(samples: list) -> dict[str, torch.Tensor]:
    return {name: torch.as_tensor(np.stack([getattr(s, name) for s in samples]), dtype=torch.float32)
            for name in ("surface", "normals", "points", "sdf")}


def _covariates(shapes) -> torch.Tensor:
    return torch.as_tensor(np.stack([s.covariates for s in shapes]), dtype=torch.float32)


@lru_cache(maxsize=2)
def _data(seed: int, n_train: int, n_test: int, n_evolution: int, evolution_range: float,
          sdf_grid: int, dense: int, truth_grid: int, n_chamfer: int) -> dict:
    family = tube_family()
    rng = np.random.default_rng(37_000 + seed)
    k = len(family.covariate_names)
    train, test = family.draw(n_train, rng), family.draw(n_test, rng)
    moved = family.draw(n_test, rng)  # the test individuals at other covariates
    moved = [Shape(m.covariates, s.variation) for s, m in zip(test, moved)]
    evolution = family.draw(n_evolution, rng, individual=False, covariates=rng.uniform(
        -evolution_range, evolution_range, (n_evolution, k)))

    def implicit(shape):
        return lambda p: family.implicit(p, shape)

    def samples(shapes, offset):
        return _tensors([sample_sdf(implicit(s), resolution=sdf_grid, dense=dense, seed=offset + i)
                         for i, s in enumerate(shapes)])

    def truth(shapes, offset):
        grid = grid_points(truth_grid)
        return [torch.as_tensor(extract_surface(implicit(s)(grid).reshape((truth_grid,) * 3),
                                                n_chamfer, seed=offset + i))
                for i, s in enumerate(shapes)]

    return {"train": samples(train, 0), "train_cov": _covariates(train),
            "test": samples(test, 1000), "test_cov": _covariates(test), "test_truth": truth(test, 2000),
            "moved_cov": _covariates(moved), "moved_truth": truth(moved, 3000),
            "evolution_cov": _covariates(evolution), "evolution_truth": truth(evolution, 4000),
            "slice_truth": implicit(evolution[0])}


def _model(arm: str, cfg: dict, k: int) -> nn.Module:
    naisr = NAISR(k, cfg["latent_dim"], cfg["hidden"], cfg["depth"], cfg["w0"])
    if arm == "naisr":
        return naisr
    target, depth, in_dim = count_parameters(naisr), cfg["depth"], 3 + k + cfg["latent_dim"]

    def size(h: int) -> int:  # parameters of a SIREN in_dim -> h (x depth) -> 1
        return (in_dim + 1) * h + (depth - 1) * (h + 1) * h + h + 1

    width = min(range(1, 16 * cfg["hidden"] * (k + 1)), key=lambda h: abs(size(h) - target))
    return ConditionalSDF(k, cfg["latent_dim"], width, cfg["depth"], cfg["w0"])


def _batch(data: dict, cfg: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    n, s = data["surface"].shape[:2]
    on = torch.randint(0, s, (n, cfg["n_surface"]), generator=generator)
    off = torch.randint(0, data["points"].shape[1], (n, cfg["n_points"]), generator=generator)
    rows = torch.arange(n)[:, None]
    return {"surface": data["surface"][rows, on], "normals": data["normals"][rows, on],
            "points": data["points"][rows, off], "sdf": data["sdf"][rows, off]}


@torch.no_grad()
def _grid_sdf(model: nn.Module, covariates: torch.Tensor, code: torch.Tensor | None,
              resolution: int) -> np.ndarray:
    grid = torch.as_tensor(grid_points(resolution), dtype=torch.float32)[None]
    values = model(grid, covariates[None], None if code is None else code[None])
    return values[0, :, 0].reshape((resolution,) * 3).numpy()


def _chamfers(model, covariates, codes, truths, cfg) -> list[float]:
    return [chamfer_distance(torch.as_tensor(extract_surface(
        _grid_sdf(model, covariates[i], None if codes is None else codes[i], cfg["grid"]),
        cfg["n_chamfer"], seed=i)), truth) for i, truth in enumerate(truths)]


def _slice_image(values: np.ndarray) -> list[list[float]]:
    """The y = 0 plane of a cubic grid as an occupancy picture (1 inside), z down, x across."""
    plane = values[:, values.shape[1] // 2, :].T
    return np.round(0.5 - 0.5 * np.tanh(plane / 0.03), 3).tolist()


def run(arm: str, cfg: dict, seed: int) -> RunOutput:
    if arm not in ARMS:
        raise did_you_mean(arm, ARMS, "arm")
    data = _data(seed, cfg["n_train"], cfg["n_test"], cfg["n_evolution"], cfg["evolution_range"],
                 cfg["sdf_grid"], cfg["dense"], cfg["truth_grid"], cfg["n_chamfer"])
    seed_everything(seed)
    model = _model(arm, cfg, data["train_cov"].shape[1])
    # auto-decoder codes as in the official trainer: max norm 1, init N(0, 1 / sqrt(L))
    codes = nn.Embedding(cfg["n_train"], cfg["latent_dim"], max_norm=1.0)
    nn.init.normal_(codes.weight, 0.0, cfg["latent_dim"] ** -0.5)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": cfg["lr"]},
                                  {"params": codes.parameters(), "lr": cfg["code_lr"]}])
    generator = torch.Generator().manual_seed(seed)
    index = torch.arange(cfg["n_train"])
    covariates = torch.cat([data["train_cov"], data["train_cov"]])
    curve_x, curve_y = [], []
    for step in range(cfg["steps"]):
        # each shape twice: with its code, and with z = 0 (the population trend, "z padding")
        batch = {name: torch.cat([value, value])
                 for name, value in _batch(data["train"], cfg, generator).items()}
        z = codes(index)
        terms = sdf_loss_terms(model, **batch, covariates=covariates,
                               codes=torch.cat([z, torch.zeros_like(z)]))
        warmup = min(1.0, step / max(1, cfg["steps"] // 10))  # official: over the first epochs
        # x2: the official loss sums the coded and the z = 0 terms, each a mean over its shapes
        loss = 2 * sum(terms.values()) + cfg["code_reg"] * warmup * z.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % cfg["curve_every"] == 0 or step == cfg["steps"] - 1:
            curve_x.append(float(step))
            curve_y.append(float(loss.detach()))
    model.eval()
    test = data["test"]
    fitted = fit_codes(model, test["surface"][:, :256], test["normals"][:, :256],
                       test["points"][:, :512], test["sdf"][:, :512], data["test_cov"],
                       steps=cfg["fit_steps"], lr=cfg["fit_lr"], code_reg=cfg["code_reg"], seed=seed)
    reconstruction = _chamfers(model, data["test_cov"], fitted, data["test_truth"], cfg)
    transfer = _chamfers(model, data["moved_cov"], fitted, data["moved_truth"], cfg)
    evolution = _chamfers(model, data["evolution_cov"], None, data["evolution_truth"], cfg)
    metrics = {"evolution_chamfer": float(np.mean(evolution)),
               "reconstruction_chamfer": float(np.mean(reconstruction)),
               "transfer_chamfer": float(np.mean(transfer)),
               "final_loss": curve_y[-1], "parameters": float(count_parameters(model))}
    info = {"per_target_evolution_chamfer": [round(c, 4) for c in evolution],
            "evolution_covariates": data["evolution_cov"][0].tolist()}
    if seed == 0:  # one picture per arm: the first evolution target, predicted and true
        info["evolution_image"] = _slice_image(_grid_sdf(model, data["evolution_cov"][0], None,
                                                         cfg["grid"]))
        truth = data["slice_truth"](grid_points(cfg["grid"])).reshape((cfg["grid"],) * 3)
        info["truth_image"] = _slice_image(truth)
    return RunOutput(metrics=metrics, curves={"train_loss": {"x": curve_x, "y": curve_y}}, info=info)
