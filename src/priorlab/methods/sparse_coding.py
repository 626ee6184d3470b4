"""Paper card: beyond l1 sparse coding in V1 (seed 49).

Components live in :mod:`priorlab.functional.sparse_coding` (``sparse_code``, ``threshold``,
``dictionary_step``, ``lam_for_threshold``, ``orientation_selectivity``, ``dictionary_image``);
whitened patches in :mod:`priorlab.data.patches`. No training-loop adapter: sparse coding is
its own alternating loop, not a regulariser of a network.
"""

from __future__ import annotations

from priorlab.functional.sparse_coding import sparse_code
from priorlab.registry import MethodCard, Paper, register

PAPER = Paper(
    title="Beyond l1 sparse coding in V1",
    authors="Ilias Rentzeperis, Luca Calatroni, Laurent U. Perrinet, Dario Prandi",
    venue="PLoS Computational Biology",
    year=2023,
    arxiv="2301.10002",
    code_url="",
    licence="no official code found from here",
    seed_id=49,
)

USAGE = """\
import torch
from priorlab.data.patches import sample_patches
from priorlab.functional.sparse_coding import (dictionary_image, dictionary_step,
                                               lam_for_threshold, normalise_columns, sparse_code)

torch.manual_seed(0)
patches = sample_patches("train", 2000, size=8).x          # whitened 8x8 patches, (2000, 64)
dictionary = normalise_columns(torch.randn(64, 128))       # 2x overcomplete, unit-norm atoms
lam = lam_for_threshold("cel0", 1.2)                       # zeroes |u| <= 1.2 at unit step
for step in range(20):                                     # Olshausen-Field learning
    batch = patches[torch.randint(len(patches), (256,))]
    codes = sparse_code(batch, dictionary, penalty="cel0", lam=lam, steps=30)  # FISTA
    dictionary = dictionary_step(batch, dictionary, codes, lr=1.0)
codes = sparse_code(patches[:500], dictionary, penalty="cel0", lam=lam, steps=100)
sparsity = (codes != 0).float().mean()                     # fraction of active units
tiles = dictionary_image(dictionary)                       # atoms in a grid, values in [0, 1]
"""

CARD = register(MethodCard(
    id="sparse-coding-v1",
    name="Sparse coding with l0 / l1/2 / CEL0 thresholds (beyond l1)",
    family="R: representations, self-supervision, structure",
    kind="function",
    paper=PAPER,
    summary=("Olshausen-Field sparse coding in which the codes are inferred by proximal "
             "gradient (ISTA/FISTA) with the threshold of a non-convex sparsity penalty instead "
             "of l1's soft threshold: hard (l0), Xu's half threshold (l1/2) or the proximal map "
             "of CEL0, the continuous exact relaxation of l0. The dictionary is learned by "
             "gradient steps on the reconstruction error with unit-norm atoms."),
    usage=USAGE,
    hyperparameters=(
        "penalty: 'l1' | 'l0' | 'l_half' | 'cel0'. lam: penalty weight in eq. 1 (E = 1/2 ||x - "
        "D a||^2 + lam sum phi(a_i)); lam_for_threshold(penalty, kill) gives the lam whose "
        "operator zeroes |u| <= kill at unit step, a common scale across penalties. steps: "
        "proximal-gradient steps from zero codes (default 100); solver 'fista' (default) or "
        "'ista'; step size step_scale / ||D||_2^2, step_scale 0.95 (CEL0's map needs step "
        "||d_i||^2 < 1). Dictionary step: lr (1.0 on unit-variance whitened patches), columns "
        "renormalised after every step. Whitening: Olshausen-Field filter |f| exp(-(|f|/f0)^4), "
        "f0 = 0.4 cycles/pixel. The paper's own defaults could not be retrieved."),
    deviations=(
        "No official code was found, so solver details are ours: FISTA from zero codes with a "
        "fixed number of steps for every penalty (the non-convex ones included) and step "
        "0.95/||D||^2. Patches come from 10 photos bundled with scikit-learn and scikit-image "
        "instead of Olshausen's natural-image set, 8x8 instead of larger patches, 2x "
        "overcomplete. Equal sparsity is reached by choosing each arm's learning lam on a "
        "4-point grid and bisecting the inference lam on validation patches. Orientation "
        "selectivity is read from each atom's 2-D Fourier energy (circular variance of "
        "orientation) rather than from fitted Gabors or simulated grating responses."),
    claim_scope=(
        "The paper claims that non-convex sparsity (l0-like thresholds, CEL0) gives better "
        "reconstruction than l1 at equal sparsity (l1 needs denser codes or more atoms), that "
        "all penalties yield oriented, V1-like receptive fields, and concludes V1 is closer to "
        "l0. Here: 8x8 whitened patches of 10 bundled photos, 128 atoms, reconstruction error "
        "at 5% active units and the fraction of oriented and localised atoms; other sparsity "
        "levels and overcompleteness ratios, and V1 data, are not run."),
    component=sparse_code,
    adapter=None,
    example=None,
    reproduction="p049_sparse_coding",
    tags=("sparse-coding", "dictionary-learning", "thresholding", "natural-images", "V1"),
))
