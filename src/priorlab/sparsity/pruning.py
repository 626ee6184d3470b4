"""Unstructured one-shot pruning of an LLM's linear layers: magnitude and Wanda masks, calibration
statistics gathered layer by layer, and :func:`prune_model`, which prunes a causal LM in place.

Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
arXiv:2306.11695, Eq. 1; official code locuslab/wanda, and its copy ``prune_wanda`` in
zyxxmu/DSnoT ``lib/prune.py``) scores every weight by ``S_ij = |W_ij| * ||X_j||_2``, the weight's
magnitude times the l2 norm of its input feature over the calibration tokens, and compares scores
within each output row: the lowest ``sparsity`` fraction of every row is zeroed. Magnitude pruning
is the same with ``S_ij = |W_ij|`` (per row, the mask DSnoT's official code starts from).

Masks are boolean with ``True`` = pruned, as in the official code.

Calibration follows the official code: the calibration sequences are run to the first decoder
layer; then, layer by layer, one pass through the still-dense layer gathers the input statistics
of each of its linear layers (forward hooks), the layer is pruned, and a second pass through the
pruned layer gives the next layer's inputs. So layer ``l`` is calibrated on inputs computed with
layers ``< l`` already pruned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

METHODS = ("wanda", "magnitude")


def check_sparsity(sparsity, who: str) -> float:
    return check_number(sparsity, "sparsity", who=who, low=0.0, high=1.0, high_open=True,
                        hint="give the fraction of each row's weights to prune, e.g. 0.5")


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """``True`` at the ``int(columns * sparsity)`` lowest scores of every row (a stable sort, so
    ties go to the lower column index, as in the official code)."""
    who = "row_mask"
    check_tensor(scores, "scores", who=who, ndim=2, dtype="float")
    sparsity = check_sparsity(sparsity, who)
    n_pruned = int(scores.shape[1] * sparsity)
    order = torch.sort(scores, dim=1, stable=True).indices
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order[:, :n_pruned], True)
    return mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the smallest-magnitude ``sparsity`` fraction of each output row of ``weight``
    (out_features, in_features)."""
    check_tensor(weight, "weight", who="magnitude_mask", ndim=2, dtype="float", finite=True)
    return row_mask(weight.abs(), sparsity)


def wanda_scores(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's ``|W_ij| * ||X_j||_2`` (Eq. 1) from ``input_sq_norm`` = ``||X_j||_2^2`` per input
    feature (any positive scale: only the order within a row matters)."""
    who = "wanda_scores"
    check_tensor(weight, "weight", who=who, ndim=2, dtype="float", finite=True)
    check_tensor(input_sq_norm, "input_sq_norm", who=who, shape=(weight.shape[1],), dtype="float",
                 finite=True, hint="one squared input norm per input feature (weight.shape[1])")
    if bool((input_sq_norm < 0).any()):
        raise PriorlabError(f"{who}: input_sq_norm must be >= 0 (squared norms)")
    return weight.abs() * input_sq_norm.to(weight.device, weight.dtype).sqrt()[None, :]


def wanda_mask(weight: torch.Tensor, input_sq_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda's mask: the lowest ``sparsity`` fraction of ``|W_ij| * ||X_j||_2`` in every output row."""
    return row_mask(wanda_scores(weight, input_sq_norm), sparsity)


class InputStats:
    """Running statistics of one linear layer's input features over calibration sequences, as
    the official ``WrappedGPT.add_batch`` keeps them (one call there is one sequence):

    - ``sq_norm``: ``sum_tokens x_j^2 / n_sequences`` (Wanda's ``||X_j||^2``, per sequence);
    - ``seq_sum``: ``sum_tokens x_j / n_sequences`` (DSnoT's expected input, summed over a sequence);
    - ``mean``: the per-token mean of ``x_j``;
    - ``var``: the variance of ``x_j`` over the tokens of a sequence (population variance),
      averaged over sequences weighted by their tokens.
    """

    def __init__(self, features: int):
        self.features = check_number(features, "features", who="InputStats", low=1, integer=True)
        self.n_sequences = 0
        self.n_tokens = 0
        self._sum = torch.zeros(self.features, dtype=torch.float64)
        self._sq_sum = torch.zeros(self.features, dtype=torch.float64)
        self._var_sum = torch.zeros(self.features, dtype=torch.float64)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs: (tokens, features) is one sequence, (batch, tokens, features)
        a batch of sequences."""
        check_tensor(x, "x", who="InputStats.update", ndim=(2, 3), dtype="float")
        if x.shape[-1] != self.features:
            raise PriorlabError(f"InputStats.update: x must have {self.features} features in its "
                                f"last dimension, got shape {tuple(x.shape)}")
        x = (x[None] if x.ndim == 2 else x).detach().to("cpu", torch.float64)
        self.n_sequences += x.shape[0]
        self.n_tokens += x.shape[0] * x.shape[1]
        self._sum += x.sum(dim=(0, 1))
        self._sq_sum += x.square().sum(dim=(0, 1))
        self._var_sum += x.var(dim=1, unbiased=False).sum(dim=0) * x.shape[1]

    def _require_data(self) -> None:
        if self.n_sequences == 0:
            raise PriorlabError("InputStats: no calibration inputs recorded yet; call update() first")

    @property
    def sq_norm(self) -> torch.Tensor:
        self._require_data()
        return (self._sq_sum / self.n_sequences).float()

    @property
    def seq_sum(self) -> torch.Tensor:
        self._require_data()
        return (self._sum / self.n_sequences).float()

    @property
    def mean(self) -> torch.Tensor:
        self._require_data()
        return (self._sum / self.n_tokens).float()

    @property
    def var(self) -> torch.Tensor:
        self._require_data()
        return (self._var_sum / self.n_tokens).float()


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a ``transformers`` causal LM laid out like Llama (``model.model.layers``:
    Llama, Mistral, Qwen, SmolLM2, ...)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise PriorlabError(f"prune_model: {type(model).__name__} has no decoder layers at "
                            "model.model.layers; pass a Llama-style transformers causal LM")
    return layers


def linear_layers(block: nn.Module, prefix: str = "") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside ``block``, by its dotted name (prefixed by ``prefix``)."""
    return {prefix + name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


class _ReachedFirstLayer(Exception):
    """Raised by the hook that stops a forward pass at the first decoder layer."""


def _first_layer_inputs(model, layer: nn.Module, batches) -> list[tuple]:
    """(hidden_states, other positional args, keyword args) of the first decoder layer, per batch."""
    captured = []

    def catch(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, tuple(args[1:]), kwargs))
        raise _ReachedFirstLayer

    handle = layer.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch, use_cache=False)
            except _ReachedFirstLayer:
                pass
    finally:
        handle.remove()
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple]) -> list[tuple]:
    outputs = []
    for hidden, args, kwargs in inputs:
        out = layer(hidden, *args, **kwargs)
        outputs.append((out[0] if isinstance(out, tuple) else out, args, kwargs))
    return outputs


Refine = Callable[[str, torch.Tensor, torch.Tensor, InputStats], torch.Tensor]


@torch.no_grad()
def prune_model(model: nn.Module, calibration_ids: torch.Tensor | None, sparsity: float,
                method: str = "wanda", *, batch_size: int = 8,
                refine: Refine | None = None) -> dict[str, float]:
    """Prune every linear layer inside the decoder blocks of ``model`` in place (embeddings and
    the LM head stay dense) to ``sparsity`` per output row, and return each pruned layer's
    fraction of zeroed weights by its module name.

    ``method``: "wanda" (|W| times input norm, calibrated) or "magnitude" (|W|).
    ``calibration_ids``: (sequences, tokens) token ids; may be ``None`` for magnitude without
    ``refine``. ``refine(name, weight, mask, stats) -> mask`` may change each layer's mask before
    it is applied (DSnoT plugs in here: :class:`priorlab.sparsity.dsnot.DSnoT`); ``name`` is the
    module's dotted name in ``model``.
    """
    who = "prune_model"
    if method not in METHODS:
        raise did_you_mean(str(method), METHODS, "pruning method")
    sparsity = check_sparsity(sparsity, who)
    batch_size = check_number(batch_size, "batch_size", who=who, low=1, integer=True)
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers) + "."
    needs_data = method == "wanda" or refine is not None
    if calibration_ids is None and needs_data:
        raise PriorlabError(f"{who}: method={method!r}{' with refine' if refine else ''} needs "
                            "calibration_ids, a (sequences, tokens) tensor of token ids")
    if calibration_ids is not None:
        check_tensor(calibration_ids, "calibration_ids", who=who, ndim=2, dtype="integer",
                     non_empty=True, hint="cut the token stream into (sequences, tokens) blocks")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = (_first_layer_inputs(model, layers[0], calibration_ids.to(device).split(batch_size))
              if needs_data else None)
    fractions = {}
    for index, layer in enumerate(layers):
        linears = linear_layers(layer, f"{prefix}{index}.")
        stats = {}
        if needs_data:
            stats = {name: InputStats(module.in_features) for name, module in linears.items()}
            handles = [module.register_forward_hook(
                lambda _m, args, _out, s=stats[name]: s.update(args[0])) for name, module in linears.items()]
            try:
                _run_layer(layer, inputs)
            finally:
                for handle in handles:
                    handle.remove()
        for name, module in linears.items():
            weight = module.weight.data
            mask = (wanda_mask(weight, stats[name].sq_norm, sparsity) if method == "wanda"
                    else magnitude_mask(weight, sparsity))
            if refine is not None:
                mask = refine(name, weight, mask, stats[name])
            weight[mask] = 0
            fractions[name] = float(mask.float().mean())
        if needs_data and index + 1 < len(layers):
            inputs = _run_layer(layer, inputs)
    model.train(was_training)
    return fractions


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the linear layers of the decoder blocks."""
    linears = linear_layers(decoder_layers(model))
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    total = sum(m.weight.numel() for m in linears.values())
    return zeros / total if total else math.nan
