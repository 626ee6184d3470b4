"""Sparse coding with l1 and non-convex thresholds: ISTA/FISTA inference and Olshausen-Field
dictionary learning.

Paper: Rentzeperis, Calatroni, Perrinet, Prandi, "Beyond l1 sparse coding in V1" (PLoS Comput.
Biol. 2023, arXiv 2301.10002). A patch x (n_features) is coded as x ~ D a with a dictionary D
(n_features x n_atoms, unit-norm columns) by minimising

    E(a) = 1/2 ||x - D a||^2 + lam * sum_i phi(a_i)                                  (eq. 1)

with proximal gradient steps a <- prox_{tau lam phi}(a + tau D^T (x - D a)), tau <= 1/||D||^2
(ISTA; FISTA adds Nesterov momentum, Beck & Teboulle 2009). The penalties and their proximal
("thresholding") operators, all for the scalar problem min_a 1/2 (a - u)^2 + t phi(a), t = tau lam:

- ``l1``: phi = |a|; soft threshold sign(u) max(|u| - t, 0).
- ``l0``: phi = [a != 0]; hard threshold u [|u| > sqrt(2 t)] (iterative hard thresholding).
- ``l_half``: phi = |a|^(1/2); Xu et al.'s half threshold (IEEE TNNLS 2012, Thm. 1, with their
  lambda = 2 t since they drop the 1/2): zero for |u| <= (54^(1/3) / 4) (2t)^(2/3), else
  (2/3) u (1 + cos(2 pi / 3 - (2/3) arccos((2t / 8) (|u| / 3)^(-3/2)))).
- ``cel0``: the continuous exact relaxation of lam ||a||_0 (Soubies, Blanc-Feraud & Aubert,
  SIAM J. Imaging Sci. 2015): phi(a) = 1 - (||d_i||^2 / (2 lam)) (|a| - sqrt(2 lam)/||d_i||)^2
  for |a| <= sqrt(2 lam)/||d_i||, else 1. Its proximal operator (step tau, tau ||d_i||^2 < 1) is
  sign(u) min(|u|, max(|u| - sqrt(2 lam) ||d_i|| tau, 0) / (1 - ||d_i||^2 tau)). Unlike the
  others it depends on lam and tau separately, so it takes both.

The dictionary step is Olshausen & Field's (Nature 1996): with codes a inferred for a batch,
D <- D + eta (x - D a) a^T / batch, then every column is rescaled to unit norm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

PENALTIES = ("l1", "l0", "l_half", "cel0")
SOLVERS = ("fista", "ista")
_HALF_JUMP = 54.0 ** (1.0 / 3.0) / 4.0  # Xu et al.: jump point (54^(1/3)/4) lambda^(2/3)


def _check_penalty(penalty: str) -> str:
    if penalty not in PENALTIES:
        raise did_you_mean(penalty, PENALTIES, "penalty")
    return penalty


def soft_threshold(u: torch.Tensor, t: float) -> torch.Tensor:
    """Proximal operator of t |a| (l1): sign(u) max(|u| - t, 0)."""
    return torch.sign(u) * torch.clamp(u.abs() - t, min=0.0)


def hard_threshold(u: torch.Tensor, t: float) -> torch.Tensor:
    """Proximal operator of t [a != 0] (l0): keeps u where |u| > sqrt(2 t), else 0."""
    return torch.where(u.abs() > math.sqrt(2.0 * t), u, torch.zeros_like(u))


def half_threshold(u: torch.Tensor, t: float) -> torch.Tensor:
    """Proximal operator of t |a|^(1/2) (Xu et al. 2012, Thm. 1, lambda = 2t)."""
    lam = 2.0 * t
    out = torch.zeros_like(u)
    keep = u.abs() > _HALF_JUMP * lam ** (2.0 / 3.0)
    kept = u[keep]  # codes are sparse: the trigonometry runs on the few survivors only
    phi = torch.arccos(torch.clamp((lam / 8.0) * (kept.abs() / 3.0) ** -1.5, -1.0, 1.0))
    out[keep] = (2.0 / 3.0) * kept * (1.0 + torch.cos(2.0 * math.pi / 3.0 - (2.0 / 3.0) * phi))
    return out


def cel0_threshold(u: torch.Tensor, lam: float, step: float,
                   column_norms: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Proximal operator of step * lam * CEL0 (Soubies et al. 2015); needs step ||d_i||^2 < 1."""
    norms = torch.as_tensor(column_norms, dtype=u.dtype)
    curvature = step * norms ** 2
    if bool((curvature >= 1.0).any()):
        raise PriorlabError(f"cel0_threshold: step * ||d_i||^2 must be < 1, got up to "
                            f"{float(curvature.max()):.4g}; take a smaller step")
    shrunk = torch.clamp(u.abs() - math.sqrt(2.0 * lam) * norms * step, min=0.0) / (1.0 - curvature)
    return torch.sign(u) * torch.minimum(u.abs(), shrunk)


def _check_column_norms(column_norms, u: torch.Tensor) -> None:
    """One non-negative atom norm, or one per atom (the last dimension of ``u``)."""
    who, hint = "threshold", "pass ||d_i|| per atom, shape (n_atoms,), or one number"
    if isinstance(column_norms, torch.Tensor) and column_norms.numel() != 1:
        check_tensor(column_norms, "column_norms", who=who, ndim=1, dtype="float", hint=hint)
        if u.ndim == 0 or column_norms.shape[0] != u.shape[-1]:
            raise PriorlabError(f"{who}: column_norms must have one entry per atom "
                                f"({u.shape[-1] if u.ndim else 'u is a scalar'}), got "
                                f"{tuple(column_norms.shape)}; {hint}")
        norms = column_norms
    else:
        norms = torch.as_tensor(check_number(column_norms, "column_norms", who=who, hint=hint))
    if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
        raise PriorlabError(f"{who}: column_norms must be finite and non-negative; {hint}")


def threshold(u: torch.Tensor, penalty: str, lam: float, step: float = 1.0,
              column_norms: torch.Tensor | float = 1.0) -> torch.Tensor:
    """The proximal operator of ``step * lam * phi`` for ``penalty`` in :data:`PENALTIES`."""
    _check_penalty(penalty)
    check_tensor(u, "u", who="threshold", dtype="float", finite=True)
    lam = check_number(lam, "lam", who="threshold", low=0.0)
    step = check_number(step, "step", who="threshold", low=0.0, low_open=True)
    if penalty == "cel0":
        _check_column_norms(column_norms, u)
    return _prox(u, penalty, lam, step, column_norms)


def _prox(u: torch.Tensor, penalty: str, lam: float, step: float,
          column_norms: torch.Tensor | float) -> torch.Tensor:
    """:func:`threshold` without the argument checks (the solver's inner loop)."""
    if penalty == "cel0":
        return cel0_threshold(u, lam, step, column_norms)
    op = {"l1": soft_threshold, "l0": hard_threshold, "l_half": half_threshold}[penalty]
    return op(u, step * lam)


def lam_for_threshold(penalty: str, kill: float) -> float:
    """The lam whose operator at unit step zeroes exactly the inputs with |u| <= ``kill``
    (unit-norm atoms for cel0): a common scale for grids over different penalties."""
    _check_penalty(penalty)
    kill = check_number(kill, "kill", who="lam_for_threshold", low=0.0, low_open=True)
    if penalty == "l1":
        return kill
    if penalty == "l_half":
        return 0.5 * (kill / _HALF_JUMP) ** 1.5
    return 0.5 * kill ** 2  # l0 and cel0: sqrt(2 lam) = kill


def penalty_value(codes: torch.Tensor, penalty: str, lam: float,
                  column_norms: torch.Tensor | float = 1.0) -> torch.Tensor:
    """lam * sum_i phi(a_i) per row of ``codes`` (the regulariser of eq. 1)."""
    _check_penalty(penalty)
    mag = codes.abs()
    if lam == 0:
        return codes.new_zeros(codes.shape[:-1])
    if penalty == "l1":
        per = mag
    elif penalty == "l0":
        per = (mag > 0).to(codes.dtype)
    elif penalty == "l_half":
        per = mag.sqrt()
    else:
        norms = torch.as_tensor(column_norms, dtype=codes.dtype)
        edge = math.sqrt(2.0 * lam) / norms
        per = torch.clamp(1.0 - norms ** 2 / (2.0 * lam) * (mag - edge) ** 2, max=1.0)
        per = torch.where(mag <= edge, per, torch.ones_like(mag))
    return lam * per.sum(dim=-1)


def _check_dictionary(x: torch.Tensor, dictionary: torch.Tensor, who: str) -> None:
    check_tensor(x, "x", who=who, ndim=2, dtype="float", finite=True, non_empty=True,
                 hint="pass patches as (batch, n_features)")
    check_tensor(dictionary, "dictionary", who=who, ndim=2, dtype="float", finite=True,
                 shape=(x.shape[1], None), hint="the dictionary is (n_features, n_atoms)")


def sparse_code(x: torch.Tensor, dictionary: torch.Tensor, *, penalty: str = "l1",
                lam: float = 0.1, steps: int = 100, solver: str = "fista",
                step_scale: float = 0.95) -> torch.Tensor:
    """Codes (batch, n_atoms) minimising eq. 1 for each row of ``x`` (batch, n_features), from
    zero, by ``steps`` proximal-gradient steps of size ``step_scale / ||D||_2^2``.

    ``step_scale < 1`` keeps CEL0's operator defined (it needs step ||d_i||^2 < 1).
    """
    _check_penalty(penalty)
    if solver not in SOLVERS:
        raise did_you_mean(solver, SOLVERS, "solver")
    _check_dictionary(x, dictionary, "sparse_code")
    # the step size needs the spectral norm, which torch computes in float32 or float64 only
    check_tensor(x, "x", who="sparse_code", dtype=(torch.float32, torch.float64))
    lam = check_number(lam, "lam", who="sparse_code", low=0.0)
    steps = check_number(steps, "steps", who="sparse_code", low=1, integer=True)
    step_scale = check_number(step_scale, "step_scale", who="sparse_code", low=0.0, high=1.0,
                              low_open=True, high_open=True)
    d = dictionary.to(x.dtype)
    lipschitz = float(torch.linalg.matrix_norm(d, ord=2)) ** 2
    gram = d.T @ d
    drive = x @ d  # D^T x for every row
    if not (torch.finfo(d.dtype).tiny <= lipschitz < math.inf and bool(torch.isfinite(gram).all())
            and bool(torch.isfinite(drive).all())):
        raise PriorlabError(f"sparse_code: the dictionary (largest singular value squared "
                            f"{lipschitz:.3g}) or x @ dictionary under- or overflows {d.dtype}; "
                            "pass unit-norm atoms (normalise_columns) and rescale x")
    tau = step_scale / lipschitz
    norms = d.norm(dim=0)
    codes = x.new_zeros(x.shape[0], d.shape[1])
    point, momentum = codes, 1.0
    for _ in range(steps):
        grad = point @ gram - drive
        new = _prox(point - tau * grad, penalty, lam, tau, norms)
        if solver == "fista":
            next_momentum = (1.0 + math.sqrt(1.0 + 4.0 * momentum ** 2)) / 2.0
            point = new + ((momentum - 1.0) / next_momentum) * (new - codes)
            momentum = next_momentum
        else:
            point = new
        codes = new
    if not bool(torch.isfinite(codes).all()):
        raise PriorlabError(f"sparse_code: the codes overflow {codes.dtype} (x up to "
                            f"{x.abs().max().item():.3g}, lam {lam:g}); rescale x or the dictionary")
    return codes


def energy(x: torch.Tensor, dictionary: torch.Tensor, codes: torch.Tensor, penalty: str,
           lam: float) -> torch.Tensor:
    """Eq. 1 per row: 1/2 ||x - D a||^2 + lam sum phi(a)."""
    residual = x - codes @ dictionary.T
    return 0.5 * (residual ** 2).sum(dim=1) + penalty_value(codes, penalty, lam,
                                                            dictionary.norm(dim=0))


def normalise_columns(dictionary: torch.Tensor) -> torch.Tensor:
    """Every atom (column) rescaled to unit l2 norm."""
    return dictionary / dictionary.norm(dim=0, keepdim=True).clamp_min(1e-12)


def dictionary_step(x: torch.Tensor, dictionary: torch.Tensor, codes: torch.Tensor,
                    lr: float) -> torch.Tensor:
    """Olshausen-Field update: D + lr (x - D a)^T a / batch, columns renormalised to unit norm."""
    _check_dictionary(x, dictionary, "dictionary_step")
    check_tensor(codes, "codes", who="dictionary_step", ndim=2, dtype="float",
                 shape=(x.shape[0], dictionary.shape[1]))
    lr = check_number(lr, "lr", who="dictionary_step", low=0.0, low_open=True)
    residual = x - codes @ dictionary.T
    return normalise_columns(dictionary + lr * residual.T @ codes / x.shape[0])


def orientation_selectivity(dictionary: torch.Tensor, patch_size: int, pad: int = 32) -> np.ndarray:
    """Per atom, how concentrated its 2-D Fourier energy is on one orientation, in [0, 1]:
    |sum_f P(f) exp(2i theta_f)| / sum_f P(f) over non-DC frequencies of the zero-padded atom
    (1 for a grating, about 0 for an isotropic blob or white noise)."""
    atoms = dictionary.detach().T.reshape(-1, patch_size, patch_size).cpu().numpy()
    power = np.abs(np.fft.fft2(atoms, s=(pad, pad))) ** 2
    freq = np.fft.fftfreq(pad)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    angle = np.exp(2j * np.arctan2(fy, fx))
    power[:, 0, 0] = 0.0
    return np.abs((power * angle).sum(axis=(1, 2))) / power.sum(axis=(1, 2)).clip(1e-12)


def localisation(dictionary: torch.Tensor, patch_size: int, window: int) -> np.ndarray:
    """Per atom, the largest share of its energy inside any ``window`` x ``window`` square."""
    atoms = dictionary.detach().T.reshape(-1, patch_size, patch_size).cpu().numpy() ** 2
    total = atoms.sum(axis=(1, 2)).clip(1e-12)
    best = np.zeros(len(atoms))
    for i in range(patch_size - window + 1):
        for j in range(patch_size - window + 1):
            best = np.maximum(best, atoms[:, i:i + window, j:j + window].sum(axis=(1, 2)))
    return best / total


def dictionary_image(dictionary: torch.Tensor, patch_size: int | None = None,
                     columns: int | None = None, gap: int = 1) -> np.ndarray:
    """The atoms tiled in a grid (row-major), each scaled to [0, 1] with 0.5 at zero; gaps are 1."""
    check_tensor(dictionary, "dictionary", who="dictionary_image", ndim=2, dtype="float")
    n_features, n_atoms = dictionary.shape
    size = patch_size or math.isqrt(n_features)
    if size * size != n_features:
        raise PriorlabError(f"dictionary_image: atoms of length {n_features} are not square "
                            "patches; pass patch_size")
    cols = columns or math.ceil(math.sqrt(n_atoms))
    rows = math.ceil(n_atoms / cols)
    atoms = dictionary.detach().T.reshape(n_atoms, size, size).cpu().numpy()
    image = np.ones((rows * (size + gap) - gap, cols * (size + gap) - gap))
    for k, atom in enumerate(atoms):
        r, c = divmod(k, cols)
        scale = max(float(np.abs(atom).max()), 1e-12)
        image[r * (size + gap):r * (size + gap) + size,
              c * (size + gap):c * (size + gap) + size] = 0.5 + 0.5 * atom / scale
    return image
