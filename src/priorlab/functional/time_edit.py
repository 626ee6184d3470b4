"""TIME: closed-form editing of a text-to-image model's cross-attention projections.

Orgad, Kawar and Belinkov, "Editing Implicit Assumptions in Text-to-Image Diffusion Models",
ICCV 2023, arXiv:2303.08084, Eq. 4-5. For every cross-attention layer, the key and value
projections ``W`` (to_k, to_v; they read the text encoder's per-token states) are replaced by
the minimiser of

    sum_i |W c_i - v*_i|^2 + lam |W - W_0|_F^2,   v*_i = W_0 c*_i,

where ``c_i`` are the token states of the *source* prompt (e.g. "a pack of roses") and ``c*_i``
those of the aligned tokens of the *destination* prompt ("a pack of blue roses"). The solution is

    W = (lam W_0 + sum_i v*_i c_i^T) (lam I + sum_i c_i c_i^T)^(-1),   lam = 0.1 (official default).

Source token ``i`` is aligned with the next destination token carrying the same id (so "roses"
reads the state of "roses" in "blue roses"); padding positions follow on in order, and positions
past the end repeat the last one (the official ``apply_time.py`` rule). All positions, padding
included, are edited, as the official code does with CLIP's 77 positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


def closed_form_edit(weight: torch.Tensor, contexts: torch.Tensor, targets: torch.Tensor,
                     lam: float = 0.1) -> torch.Tensor:
    """``(lam W_0 + sum v c^T)(lam I + sum c c^T)^(-1)`` for ``weight`` (out, in), ``contexts``
    (N, in) and ``targets`` (N, out); solved as a linear system in float64, returned in
    ``weight``'s dtype."""
    who = "closed_form_edit"
    lam = check_number(lam, "lam", who=who, low=0, low_open=True)
    check_tensor(weight, "weight", who=who, ndim=2, dtype="float", finite=True, non_empty=True)
    out_dim, in_dim = weight.shape
    check_tensor(contexts, "contexts", who=who, shape=(None, in_dim), dtype="float", finite=True)
    check_tensor(targets, "targets", who=who, shape=(len(contexts), out_dim), dtype="float", finite=True)
    w0, c, v = weight.double(), contexts.double(), targets.double()
    lhs = lam * torch.eye(in_dim, dtype=torch.float64) + c.T @ c  # symmetric
    rhs = lam * w0 + v.T @ c
    # W lhs = rhs  <=>  lhs W^T = rhs^T (lhs is symmetric)
    return torch.linalg.solve(lhs, rhs.T).T.to(weight.dtype)


def align_tokens(source_ids: Sequence[int], destination_ids: Sequence[int]) -> list[int]:
    """For each source position, the destination position it reads its target from.

    Source token ``i`` maps to the first later destination position with the same id; the
    positions after the last real source token continue in order and saturate at the end.
    """
    source, dest = [int(t) for t in source_ids], [int(t) for t in destination_ids]
    index, j = [], 0
    for position, token in enumerate(source):
        while j < len(dest) and dest[j] != token:
            j += 1
        if j == len(dest):  # no match left: the rest of the source is padding-like
            index.extend(min(len(dest) - 1, index[-1] + 1 + k if index else k)
                         for k in range(len(source) - position))
            return index
        index.append(j)
        j += 1
    return index


def cross_attention_layers(unet: nn.Module, text_dim: int | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every cross-attention module of a diffusers UNet (any size): modules
    with ``to_k``/``to_v`` linear maps whose input is the text states (``is_cross_attention``, or
    ``in_features == text_dim`` when given)."""
    layers = []
    for name, module in unet.named_modules():
        to_k, to_v = getattr(module, "to_k", None), getattr(module, "to_v", None)
        if not isinstance(to_k, nn.Linear) or not isinstance(to_v, nn.Linear):
            continue
        cross = getattr(module, "is_cross_attention", None)
        if (text_dim is not None and to_k.in_features == text_dim) or (text_dim is None and cross):
            layers.append((name, module))
    if not layers:
        raise PriorlabError("time_edit: the model has no cross-attention to_k/to_v projections "
                            f"(text_dim={text_dim})")
    return layers


@torch.no_grad()
def time_edit(unet: nn.Module, source_states: torch.Tensor, destination_states: torch.Tensor,
              alignments: Sequence[Sequence[int]], *, lam: float = 0.1, edit_keys: bool = True,
              text_dim: int | None = None) -> dict[str, torch.Tensor]:
    """Edit ``unet``'s cross-attention projections in place so the source prompts read like the
    destination prompts. Returns the original weights by parameter name (for undoing).

    ``source_states`` and ``destination_states``: (P, L, D) text-encoder states of P prompt
    pairs (the paper uses the prompt and, with ``--with_augs``, "A photo of ..." variants);
    ``alignments[p]``: the destination position for each of the L source positions
    (:func:`align_tokens`). ``edit_keys`` edits to_k as well as to_v (the paper edits both).
    """
    who = "time_edit"
    check_tensor(source_states, "source_states", who=who, ndim=3, dtype="float", finite=True, non_empty=True)
    check_tensor(destination_states, "destination_states", who=who, ndim=3, dtype="float", finite=True)
    (n_pairs, _, width), (n_dest, _, dest_width) = source_states.shape, destination_states.shape
    if n_pairs != n_dest or width != dest_width:
        raise PriorlabError(f"{who}: source {tuple(source_states.shape)} and destination "
                            f"{tuple(destination_states.shape)} need the same number of prompts and width")
    if len(alignments) != len(source_states) or any(len(a) != source_states.shape[1] for a in alignments):
        raise PriorlabError(f"{who}: need one alignment of length {source_states.shape[1]} per prompt pair")
    if any(not 0 <= int(j) < destination_states.shape[1] for a in alignments for j in a):
        raise PriorlabError(f"{who}: alignment positions must lie in [0, {destination_states.shape[1]})")
    contexts = source_states.reshape(-1, source_states.shape[2])
    aligned = torch.stack([destination_states[p, list(map(int, a))] for p, a in enumerate(alignments)])
    aligned = aligned.reshape(-1, destination_states.shape[2])
    originals = {}
    for name, module in cross_attention_layers(unet, text_dim):
        for proj_name in ("to_v", "to_k") if edit_keys else ("to_v",):
            linear = getattr(module, proj_name)
            if linear.in_features != contexts.shape[1]:
                raise PriorlabError(f"{who}: {name}.{proj_name} reads {linear.in_features}-d states, "
                                    f"the prompts are {contexts.shape[1]}-d")
            w0 = linear.weight.detach().clone()
            targets = aligned.to(w0.dtype) @ w0.T  # v* = W_0 c* (the bias, if any, is left alone)
            linear.weight.copy_(closed_form_edit(w0, contexts.to(w0.dtype), targets, lam))
            originals[f"{name}.{proj_name}.weight"] = w0
    return originals


def undo_edit(unet: nn.Module, originals: dict[str, torch.Tensor]) -> None:
    """Put back the weights :func:`time_edit` returned."""
    params = dict(unet.named_parameters())
    unknown = set(originals) - set(params)
    if unknown:
        raise PriorlabError(f"undo_edit: the model has no parameter(s) {sorted(unknown)}")
    with torch.no_grad():
        for name, weight in originals.items():
            params[name].copy_(weight)
