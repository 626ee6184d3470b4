"""Checks shared by priorlab's optimisers: non-finite gradients and loaded state dicts."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence

import torch

from priorlab.errors import PriorlabError

NONFINITE_POLICIES = ("skip", "raise")


def check_nonfinite_policy(nonfinite, who: str) -> str:
    if nonfinite not in NONFINITE_POLICIES:
        raise PriorlabError(f"{who}: nonfinite must be 'skip' (skip the step and warn) or 'raise', "
                            f"got {nonfinite!r}")
    return nonfinite


def nonfinite_gradients(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The parameters among ``params`` whose ``.grad`` holds a NaN or an infinity (one sync)."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return []
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for p in with_grad:
        by_device.setdefault(p.grad.device, []).append(p)
    bad = []
    for group in by_device.values():  # one stacked flag tensor, hence one sync, per device
        flags = torch.stack([torch.isfinite(p.grad).all() for p in group]).tolist()
        bad += [p for p, ok in zip(group, flags) if not ok]
    return bad


def handle_nonfinite(bad: Sequence[torch.Tensor], policy: str, who: str, stacklevel: int) -> None:
    """Raise (``policy="raise"``) or warn that the step is skipped, naming the parameters' shapes;
    ``stacklevel`` points the warning at the line that called ``optimizer.step()``."""
    shapes = ", ".join(str(tuple(p.shape)) for p in bad[:5]) + (" ..." if len(bad) > 5 else "")
    what = (f"{who}: NaN or infinite gradient in {len(bad)} parameter(s) of shape {shapes}")
    if policy == "raise":
        raise PriorlabError(f"{what}; lower the learning rate, clip gradients or check the loss "
                            f"(nonfinite='skip' skips such steps instead)")
    warnings.warn(f"{what}: step skipped for their parameter group, optimizer state unchanged "
                  f"(nonfinite='raise' makes this an error)", RuntimeWarning, stacklevel=stacklevel)


@functools.cache
def _torch_hyperparameter_names() -> frozenset[str]:
    """Constructor arguments of torch's optimisers: a loaded group holding one a priorlab
    optimiser lacks comes from another optimiser (keys added by lr schedulers are not among them)."""
    names = set()
    for attr in dir(torch.optim):
        cls = getattr(torch.optim, attr)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
            names |= set(inspect.signature(cls.__init__).parameters)
    return frozenset(names - {"self", "params"})


def check_loaded_state_dict(state_dict, optimizer: torch.optim.Optimizer, who: str,
                            check_group: Callable[[dict], None]) -> None:
    """Check a state dict before ``optimizer`` loads it, so a rejected one leaves it unchanged.

    ``check_group`` runs the constructor's hyperparameter checks on each loaded group. Also
    refused: a dict without ``state``/``param_groups``, groups that do not match the optimiser's,
    hyperparameters of another optimiser (e.g. an AdamW state), non-finite state tensors.
    """
    if (not isinstance(state_dict, dict) or not isinstance(state_dict.get("state"), dict)
            or not isinstance(state_dict.get("param_groups"), list)):
        raise PriorlabError(f"{who}.load_state_dict needs a dict with 'state' and 'param_groups' "
                            f"as returned by optimizer.state_dict(), got {type(state_dict).__name__}")
    groups = state_dict["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise PriorlabError(f"{who}.load_state_dict: the state has {len(groups)} parameter "
                            f"group(s), this optimizer {len(optimizer.param_groups)}")
    own = set(optimizer.defaults)
    foreign_names = _torch_hyperparameter_names() - own
    for loaded, current in zip(groups, optimizer.param_groups):
        if not isinstance(loaded, dict) or not isinstance(loaded.get("params"), list):
            raise PriorlabError(f"{who}.load_state_dict: each parameter group must be a dict with "
                                f"a 'params' list")
        if len(loaded["params"]) != len(current["params"]):
            raise PriorlabError(f"{who}.load_state_dict: a loaded group has "
                                f"{len(loaded['params'])} parameters, this optimizer's "
                                f"{len(current['params'])}; build it over the same parameters")
        foreign = sorted(foreign_names & set(loaded))
        if foreign:
            raise PriorlabError(f"{who}.load_state_dict: the state holds {', '.join(foreign)}, "
                                f"which {who} does not use: it is another optimizer's state")
        check_group({**optimizer.defaults, **loaded})
    # the loaded indices map onto this optimizer's parameters in order, as torch maps them
    params = [p for group in optimizer.param_groups for p in group["params"]]
    by_index = dict(zip([i for group in groups for i in group["params"]], params))
    factored = isinstance(optimizer, getattr(torch.optim, "Adafactor", ()))  # keeps row/column stats
    for index, entry in state_dict["state"].items():
        param = by_index.get(index)
        if param is None or not isinstance(entry, dict):
            raise PriorlabError(f"{who}.load_state_dict: the state of parameter {index!r} must be a "
                                f"dict for a parameter listed in param_groups, got "
                                f"{type(entry).__name__}")
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise PriorlabError(f"{who}.load_state_dict: state {key!r} of parameter {index} "
                                    f"holds NaN or infinity; the checkpoint is corrupt")
            if value.ndim and not factored and value.shape != param.shape:
                raise PriorlabError(f"{who}.load_state_dict: state {key!r} of parameter {index} has "
                                    f"shape {tuple(value.shape)}, the parameter {tuple(param.shape)}; "
                                    "is it another model's state?")
