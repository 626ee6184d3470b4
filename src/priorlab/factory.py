"""Pick an optimiser or an adapter by name, as a config file would.

    create_optimizer(model, "lion", lr=1e-4)
    create_optimizer(model, "perpgrad+adamw", lr=1e-2, wrapper_kwargs={"perpgrad": {"eps": 1e-30}})
    create_adapter("elr", num_samples=50_000, num_classes=10)

Optimiser names are the ids of the registry's optimiser cards (``lion``, ``perpgrad``), priorlab
optimisers without a card of their own (``normalized-gd``) and torch's ``sgd``, ``adam`` and
``adamw``. Names fold case, and ``_`` reads as ``-``.

Wrappers compose with ``+``, wrapper names first and the base optimiser last, read outside in:
``"perpgrad+lion"`` is ``PerpGrad(Lion(params, **kw))``. Keyword arguments go to the base; a
wrapper's own arguments go in ``wrapper_kwargs={"perpgrad": {...}}``. A wrapper is a card
optimiser whose constructor takes an optimizer instance instead of parameters.

Adapter names are the ids of the cards that carry an ``adapter`` factory (``elr``, ``pskd``, ...).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import torch
from torch import nn

from priorlab.errors import PriorlabError, did_you_mean

_TORCH_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _fold(name, what: str = "name") -> str:
    if not isinstance(name, str) or not name.strip():
        raise PriorlabError(f"{what} must be a non-empty string, got {name!r}")
    return name.strip().lower().replace("_", "-")


def _priorlab_extras() -> dict[str, type]:
    """priorlab optimisers that live inside a component and have no optimiser card."""
    from priorlab.nn.attention_svm import NormalizedGD

    return {"normalized-gd": NormalizedGD}


def _is_wrapper(cls: type) -> bool:
    """A wrapper's constructor takes an optimiser where a base takes ``params``."""
    parameters = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    return bool(parameters) and parameters[0] != "params"


def _optimizer_table() -> dict[str, type]:
    from priorlab.registry import all_cards

    table: dict[str, type] = dict(_TORCH_OPTIMIZERS)
    table.update(_priorlab_extras())
    for card in all_cards():
        component = card.component
        if card.kind == "optimizer" and isinstance(component, type) \
                and issubclass(component, torch.optim.Optimizer):
            table[card.id] = component
    return table


def _adapter_table() -> dict[str, Callable]:
    from priorlab.registry import all_cards

    return {card.id: card.adapter for card in all_cards() if card.adapter is not None}


def list_optimizers() -> list[str]:
    """Every name :func:`create_optimizer` accepts, sorted (wrappers included; see
    :func:`list_optimizer_wrappers` for which ones compose)."""
    return sorted(_optimizer_table())


def list_optimizer_wrappers() -> list[str]:
    """The optimiser names that wrap another optimiser (``"perpgrad"``), used as ``"perpgrad+base"``."""
    return sorted(name for name, cls in _optimizer_table().items() if _is_wrapper(cls))


def list_adapters() -> list[str]:
    """Every name :func:`create_adapter` accepts, sorted."""
    return sorted(_adapter_table())


def _parameters(model_or_params) -> list:
    if isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
        if not params:
            raise PriorlabError(f"create_optimizer: the model {type(model_or_params).__name__} has no "
                                "trainable parameters (none with requires_grad=True)")
        return params
    if isinstance(model_or_params, torch.Tensor) or not isinstance(model_or_params, Iterable):
        raise PriorlabError(f"create_optimizer: model_or_params must be an nn.Module or an iterable of "
                            f"parameters or parameter groups, got {type(model_or_params).__name__}")
    params = list(model_or_params)
    if not params:
        raise PriorlabError("create_optimizer: model_or_params is empty; pass model.parameters() of a "
                            "model that has parameters")
    return params


def _construct(cls: type, name: str, first, kwargs: dict, who: str):
    """``cls(first, **kwargs)``; a wrong keyword becomes a PriorlabError listing the accepted ones."""
    try:
        inspect.signature(cls).bind(first, **kwargs)
    except TypeError as error:
        accepted = list(inspect.signature(cls).parameters)[1:]  # after params / the wrapped optimizer
        raise PriorlabError(f"{who} {name!r} ({cls.__name__}): {error}; it accepts "
                            f"{', '.join(accepted) or 'no keyword arguments'}") from None
    return cls(first, **kwargs)


def create_optimizer(model_or_params, name: str, *, wrapper_kwargs: dict[str, dict] | None = None,
                     **kwargs) -> torch.optim.Optimizer:
    """Build the optimiser ``name`` over a model's trainable parameters or given parameter groups.

    ``name`` is one base optimiser (``"lion"``, ``"adamw"``) or wrappers then a base joined by
    ``+`` (``"perpgrad+lion"`` = ``PerpGrad(Lion(...))``). ``kwargs`` go to the base;
    ``wrapper_kwargs`` maps a wrapper's name to its own keyword arguments. Unknown names raise a
    :class:`~priorlab.errors.UsageError` with the closest known names.
    """
    table = _optimizer_table()
    parts = [_fold(part, f"each '+'-joined part of the optimizer name {name!r}")
             for part in _fold(name, "create_optimizer: name").split("+")]
    for part in parts:
        if part not in table:
            raise did_you_mean(part, list(table), "optimizer")
    *wrappers, base = parts
    if _is_wrapper(table[base]):
        raise PriorlabError(f"create_optimizer: {base!r} wraps another optimizer, so it cannot come "
                            f"last in {name!r}; name a base after it, e.g. '{base}+adamw' (wrappers "
                            "first, the base optimizer last)")
    for wrapper in wrappers:
        if not _is_wrapper(table[wrapper]):
            raise PriorlabError(f"create_optimizer: {wrapper!r} is a base optimizer, not a wrapper, so "
                                f"it must come last in {name!r}; wrappers: "
                                f"{', '.join(list_optimizer_wrappers()) or 'none'}")
    wrapper_kwargs = {_fold(key): value for key, value in (wrapper_kwargs or {}).items()}
    stray = sorted(set(wrapper_kwargs) - set(wrappers))
    if stray:
        raise PriorlabError(f"create_optimizer: wrapper_kwargs names {', '.join(map(repr, stray))}, "
                            f"which is not a wrapper in {name!r}")
    optimizer = _construct(table[base], base, _parameters(model_or_params), kwargs, "optimizer")
    for wrapper in reversed(wrappers):  # the innermost wrapper is the one next to the base
        options = wrapper_kwargs.get(wrapper, {})
        if not isinstance(options, dict):
            raise PriorlabError(f"create_optimizer: wrapper_kwargs[{wrapper!r}] must be a dict of "
                                f"keyword arguments, got {type(options).__name__}")
        optimizer = _construct(table[wrapper], wrapper, optimizer, options, "optimizer wrapper")
    return optimizer


def create_adapter(name: str, **kwargs):
    """Build the training-loop adapter of the method ``name`` (a card id) with ``kwargs``."""
    table = _adapter_table()
    folded = _fold(name, "create_adapter: name")
    if folded not in table:
        raise did_you_mean(folded, list(table), "adapter")
    factory = table[folded]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as error:
        accepted = ", ".join(inspect.signature(factory).parameters)
        raise PriorlabError(f"create_adapter: adapter {folded!r}: {error}; it accepts {accepted}") from None
    return factory(**kwargs)
