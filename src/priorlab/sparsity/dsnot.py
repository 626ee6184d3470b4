"""DSnoT: training-free prune-and-grow cycles that refine a sparse LLM's mask.

Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024,
arXiv:2310.08915; official code zyxxmu/DSnoT, ``lib/prune.py`` (``prune_DSnoT``, unstructured
branch), run as its README's command runs it under the repository's first ``main.py`` (50 cycles,
update threshold 0.1, variance power 1, the sign rule on, every layer refined). The current
``main.py`` turns the sign rule off (a ``type=bool`` flag that cannot be switched back on) and
leaves MLP layers at their initial mask: ``DSnoT(keep_error_sign=False, skip=("mlp",))``.

For one linear layer with weights ``W`` (out, in), a mask ``M`` (``True`` = pruned) and the mean
input ``x_bar_j`` (summed over a calibration sequence), the expected reconstruction error of
output row ``i`` is ``e_i = sum_{j pruned} W_ij x_bar_j`` (dense minus sparse output). Each cycle
swaps, in every row still updating, one pruned weight back in and one kept weight out:

- grow the pruned weight that most reduces the error per unit of input variance: the largest
  ``W_ij x_bar_j / Var(x_j)^p`` when ``e_i > 0``, the smallest when ``e_i <= 0`` (growing criterion
  with the sign of the error and the variance term);
- prune the kept weight that moves the error towards zero and matters least: among kept weights
  whose contribution ``W_ij x_bar_j`` has the sign opposite to ``e_i``'s, the one with the lowest
  Wanda score ``|W_ij| ||X_j||`` (pruning criterion);
- ``e_i += W_ip x_bar_p - W_ig x_bar_g``.

A row stops for good once ``|e_i| <= update_threshold`` before a swap or, with
``keep_error_sign``, once a swap would flip the error's sign (so ``|e_i|`` only shrinks); all
stop after ``max_cycles``.
Candidates are visited in a fixed order computed once (the official code does not re-sort; only
the ``max_cycles`` entries a cursor can reach are ranked here), and every swap keeps the row's
sparsity. No weight value changes. A row also stops when the candidates of the sign it needs run
out (the official cursors would walk on into other entries; not within 50 cycles of real rows).
"""

from __future__ import annotations

import torch

from priorlab.errors import PriorlabError
from priorlab.sparsity.pruning import InputStats, wanda_scores
from priorlab.validation import check_finite, check_number, check_tensor

# the README's command under the first official main.py
MAX_CYCLES = 50
UPDATE_THRESHOLD = 0.1
VARIANCE_POWER = 1.0
KEEP_ERROR_SIGN = True
SKIP = ()


def _smallest(keys: torch.Tensor, k: int, largest: bool = False) -> torch.Tensor:
    """Column indices of each row's ``k`` smallest (or largest) keys, in order: the only entries
    a cursor can reach in ``k`` cycles, so whole rows need not be sorted."""
    return torch.topk(keys, k, dim=1, largest=largest, sorted=True).indices


@torch.no_grad()
def dsnot_mask(weight: torch.Tensor, mask: torch.Tensor, stats: InputStats, *,
               max_cycles: int = MAX_CYCLES, update_threshold: float = UPDATE_THRESHOLD,
               variance_power: float = VARIANCE_POWER,
               keep_error_sign: bool = KEEP_ERROR_SIGN) -> torch.Tensor:
    """The refined mask (a new tensor; ``True`` = pruned) after DSnoT's prune-and-grow cycles on
    ``weight`` (out, in) with the initial ``mask`` and the layer's calibration ``stats``.

    ``update_threshold`` is compared with the error of a sum over a calibration sequence
    (``stats.seq_sum``), as officially (2048-token sequences there).
    """
    who = "dsnot_mask"
    check_tensor(weight, "weight", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    check_tensor(mask, "mask", who=who, shape=tuple(weight.shape), dtype="bool",
                 hint="a boolean mask shaped like weight, True where a weight is pruned")
    if not isinstance(stats, InputStats) or stats.features != weight.shape[1]:
        raise PriorlabError(f"{who}: stats must be the InputStats of this layer's inputs "
                            f"({weight.shape[1]} features), got {stats!r}")
    for name in ("seq_sum", "var"):
        check_finite(getattr(stats, name), f"stats.{name}", who=who,
                     hint="the calibration inputs held NaN or infinite values")
    max_cycles = check_number(max_cycles, "max_cycles", who=who, low=0, integer=True)
    update_threshold = check_number(update_threshold, "update_threshold", who=who, low=0.0)
    variance_power = check_number(variance_power, "variance_power", who=who, low=0.0)

    weight = weight.detach().float().cpu()
    pruned = mask.detach().cpu().clone()
    kept = ~pruned
    out_features, n = weight.shape
    contribution = weight * stats.seq_sum[None, :]
    # every error and swap below is a partial sum of a row's contributions, so finite if this is
    if not bool(torch.isfinite(contribution.abs().sum(dim=1)).all()):
        raise PriorlabError(f"{who}: weight times the calibration inputs (stats.seq_sum) overflows "
                            "float32; check the weight and the calibration data for huge values")
    error = (contribution * pruned).sum(dim=1)
    initial_sign = torch.sign(error)
    # a constant input (zero variance) makes its weight the ideal one to regrow, not a NaN
    variance = stats.var.clamp_min(torch.finfo(torch.float32).tiny) ** variance_power
    grow_key = contribution / variance[None, :]
    reach = min(max_cycles, n)
    if reach == 0:
        return pruned.to(mask.device)
    # growth: the most negative / most positive pruned weights (the official sorted list's ends)
    grow_lists = (_smallest(torch.where(pruned, grow_key, torch.inf), reach),
                  _smallest(torch.where(pruned, grow_key, -torch.inf), reach, largest=True))
    # pruning (the official return_reorder_indice): kept weights of negative contribution by
    # rising Wanda score at one end, of positive contribution by rising score at the other
    wanda = wanda_scores(weight, stats.sq_norm)
    negative, positive = kept & (contribution < 0), kept & (contribution > 0)
    prune_lists = (_smallest(torch.where(negative, wanda, torch.inf), reach),
                   _smallest(torch.where(positive, wanda, torch.inf), reach))
    n_pruned, n_negative, n_positive = pruned.sum(1), negative.sum(1), positive.sum(1)
    used = [torch.zeros(out_features, dtype=torch.long) for _ in range(4)]  # cursors: grow lo/hi, prune lo/hi
    rows = torch.arange(out_features)
    active = torch.ones(out_features, dtype=torch.bool)
    for _ in range(max_cycles):
        if not bool(active.any()):
            break
        grow_top, prune_top = error > 0, error < 0
        at = [u.clamp(max=reach - 1) for u in used]  # rows that ran out are stopped below
        grow = torch.where(grow_top, grow_lists[1][rows, at[1]], grow_lists[0][rows, at[0]])
        prune = torch.where(prune_top, prune_lists[1][rows, at[3]], prune_lists[0][rows, at[2]])
        in_range = (used[0] + used[1] < n_pruned) & torch.where(prune_top, used[3] < n_positive,
                                                                 used[2] < n_negative)
        delta = contribution[rows, prune] - contribution[rows, grow]
        active &= in_range & (error.abs() > update_threshold)
        if keep_error_sign:
            active &= torch.sign(error + delta) == initial_sign
        pruned[rows[active], prune[active]] = True
        pruned[rows[active], grow[active]] = False
        error = error + torch.where(active, delta, torch.zeros_like(delta))
        used[1] += grow_top.long()
        used[0] += (~grow_top).long()
        used[3] += prune_top.long()
        used[2] += (~prune_top).long()
    return pruned.to(mask.device)


class DSnoT:
    """DSnoT as the ``refine`` step of :func:`priorlab.sparsity.pruning.prune_model`:
    ``prune_model(model, ids, 0.6, method="wanda", refine=DSnoT())``.

    ``skip``: layers left at their initial mask, matched against the dotted parts of the module
    name (``()`` refines every layer; the current official default ``("mlp",)`` only the
    attention projections). Per refined layer name, ``regrown`` counts the weights brought back (as
    many were pruned in exchange) and ``error`` holds the mean ``|e_i|`` over rows before and
    after the cycles.
    """

    def __init__(self, max_cycles: int = MAX_CYCLES, update_threshold: float = UPDATE_THRESHOLD,
                 variance_power: float = VARIANCE_POWER, keep_error_sign: bool = KEEP_ERROR_SIGN,
                 skip: tuple[str, ...] = SKIP):
        who = "DSnoT"
        self.max_cycles = check_number(max_cycles, "max_cycles", who=who, low=0, integer=True)
        self.update_threshold = check_number(update_threshold, "update_threshold", who=who, low=0.0)
        self.variance_power = check_number(variance_power, "variance_power", who=who, low=0.0)
        self.keep_error_sign = bool(keep_error_sign)
        if isinstance(skip, str) or not all(isinstance(s, str) for s in skip):
            raise PriorlabError(f"{who}: skip must be a tuple of module-name parts such as "
                                f"('mlp',) or (), got {skip!r}")
        self.skip = tuple(skip)
        self.regrown: dict[str, int] = {}
        self.error: dict[str, tuple[float, float]] = {}

    def __call__(self, name: str, weight: torch.Tensor, mask: torch.Tensor,
                 stats: InputStats) -> torch.Tensor:
        if set(name.split(".")) & set(self.skip):
            return mask
        refined = dsnot_mask(weight, mask, stats, max_cycles=self.max_cycles,
                             update_threshold=self.update_threshold,
                             variance_power=self.variance_power, keep_error_sign=self.keep_error_sign)
        self.regrown[name] = int((mask & ~refined).sum())
        contribution = weight.detach().float().cpu() * stats.seq_sum[None, :]
        self.error[name] = tuple(float((contribution * m.cpu()).sum(1).abs().mean())
                                 for m in (mask, refined))
        return refined
