"""Continual-learning task streams and the evaluation that fills an accuracy matrix.

This is priorlab's own small continual-learning protocol. We do not use avalanche: it needs a
torchvision that cannot be installed beside the CPU torch build the project pins, and the few
pieces the family's papers need (split, permuted and rotated streams over the offline image
sets, and a masked evaluation) fit in two short modules.

A stream is a :class:`TaskStream`: a tuple of :class:`Task` (train / val / test tensors, the
task's classes, its id) and a scenario:

- ``"class-incremental"``: one growing head; after task ``i`` a prediction is the argmax over
  every class seen in tasks ``0..i`` (the task id is not given at test time).
- ``"task-incremental"``: the task id is given at test time; logits are masked to the task's
  own classes before the argmax.
- ``"domain-incremental"``: every task has the same classes (permuted / rotated inputs); the
  argmax runs over all of them.

Split streams partition the classes (split Fashion-MNIST, split digits). Permuted and rotated
streams transform the inputs per task; in the class- and task-incremental scenarios their
labels are shifted by ``task_id * num_classes`` so that each task brings new classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.data.images import ImageData, load_images
from priorlab.errors import PriorlabError, did_you_mean
from priorlab.validation import check_number, check_tensor

SCENARIOS = ("class-incremental", "task-incremental", "domain-incremental")
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """One task of a stream: its id, its classes (sorted labels) and its splits."""

    task_id: int
    classes: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class TaskStream:
    """A sequence of tasks and how they are evaluated (``scenario``, see the module docstring).

    ``num_classes`` is the size of the head a model needs for the whole stream.
    """

    tasks: tuple[Task, ...]
    scenario: str
    num_classes: int
    name: str

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise did_you_mean(self.scenario, SCENARIOS, "scenario")
        if not self.tasks:
            raise PriorlabError(f"stream {self.name!r} has no tasks")

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def seen_classes(self, upto: int) -> tuple[int, ...]:
        """Sorted classes of tasks ``0..upto`` (inclusive)."""
        upto = _check_task_index(self, upto)
        return tuple(sorted({c for task in self.tasks[:upto + 1] for c in task.classes}))

    def allowed_classes(self, task_index: int, trained_upto: int) -> tuple[int, ...]:
        """The classes the argmax runs over when testing task ``task_index`` after training
        ``trained_upto``: the task's own (task-incremental), all seen so far
        (class-incremental) or all of the stream's (domain-incremental)."""
        task = self.tasks[_check_task_index(self, task_index)]
        if self.scenario == "task-incremental":
            return task.classes
        if self.scenario == "class-incremental":
            return self.seen_classes(trained_upto)
        return tuple(range(self.num_classes))


def _check_task_index(stream: TaskStream, i) -> int:
    return check_number(i, "task index", who=f"stream {stream.name!r}", low=0,
                        high=len(stream.tasks) - 1, integer=True)


def _check_scenario(scenario: str) -> str:
    if scenario not in SCENARIOS:
        raise did_you_mean(scenario, SCENARIOS, "scenario")
    return scenario


def split_stream(data: ImageData, classes_per_task: int = 2, *,
                 class_order: Sequence[int] | None = None,
                 scenario: str = "class-incremental") -> TaskStream:
    """Partition ``data``'s classes into consecutive tasks of ``classes_per_task`` classes.

    ``class_order`` (default: 0, 1, 2, ...) may list a subset of the classes, e.g. to keep some
    for pretraining; its length must be a multiple of ``classes_per_task``. Labels keep their
    original values, so a model's head has ``data.num_classes`` outputs.
    """
    scenario = _check_scenario(scenario)
    if scenario == "domain-incremental":
        raise PriorlabError("split_stream: a split stream gives each task new classes; use "
                            "'class-incremental' or 'task-incremental' (domain-incremental is for "
                            "permuted_stream / rotated_stream)")
    per_task = check_number(classes_per_task, "classes_per_task", who="split_stream", low=1,
                            integer=True)
    order = list(range(data.num_classes)) if class_order is None else [int(c) for c in class_order]
    if len(set(order)) != len(order) or any(not 0 <= c < data.num_classes for c in order):
        raise PriorlabError(f"split_stream: class_order must list distinct classes in "
                            f"0..{data.num_classes - 1}, got {order}")
    if not order or len(order) % per_task:
        raise PriorlabError(f"split_stream: {len(order)} classes do not split into tasks of "
                            f"{per_task}; pass a class_order whose length is a multiple")
    tasks = []
    for task_id, start in enumerate(range(0, len(order), per_task)):
        classes = tuple(sorted(order[start:start + per_task]))
        members = torch.tensor(classes)
        splits = {}
        for split in _SPLITS:
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            keep = torch.isin(y, members)
            if not bool(keep.any()):
                raise PriorlabError(f"split_stream: task {task_id} (classes {classes}) has no "
                                    f"{split} samples; load more data")
            splits[f"x_{split}"], splits[f"y_{split}"] = x[keep], y[keep]
        tasks.append(Task(task_id=task_id, classes=classes, **splits))
    return TaskStream(tuple(tasks), scenario, data.num_classes, f"split-{data.name}")


def split_fashion_mnist(classes_per_task: int = 2, *, class_order: Sequence[int] | None = None,
                        scenario: str = "class-incremental", n_train: int | None = None,
                        n_val: int | None = None, n_test: int | None = None,
                        split_seed: int = 0) -> TaskStream:
    """Split Fashion-MNIST (28x28); sizes cap each split before it is divided into tasks."""
    data = load_images("fashion-mnist", n_train=n_train, n_val=n_val, n_test=n_test,
                       split_seed=split_seed)
    return split_stream(data, classes_per_task, class_order=class_order, scenario=scenario)


def split_digits(classes_per_task: int = 2, *, class_order: Sequence[int] | None = None,
                 scenario: str = "class-incremental", split_seed: int = 0) -> TaskStream:
    """Split sklearn digits (8x8, 1,797 images: ships with scikit-learn, always offline)."""
    data = load_images("digits", split_seed=split_seed)
    return split_stream(data, classes_per_task, class_order=class_order, scenario=scenario)


def _transformed_stream(data: ImageData, transforms: list, scenario: str, name: str) -> TaskStream:
    scenario = _check_scenario(scenario)
    c = data.num_classes
    tasks = []
    for task_id, transform in enumerate(transforms):
        offset = 0 if scenario == "domain-incremental" else task_id * c
        splits = {}
        for split in _SPLITS:
            splits[f"x_{split}"] = transform(getattr(data, f"x_{split}"))
            splits[f"y_{split}"] = getattr(data, f"y_{split}") + offset
        tasks.append(Task(task_id=task_id, classes=tuple(range(offset, offset + c)), **splits))
    n_classes = c if scenario == "domain-incremental" else c * len(transforms)
    return TaskStream(tuple(tasks), scenario, n_classes, name)


def permuted_stream(data: ImageData, n_tasks: int = 5, *, seed: int = 0,
                    scenario: str = "domain-incremental") -> TaskStream:
    """Each task applies its own fixed pixel permutation to every image (task 0: identity)."""
    n_tasks = check_number(n_tasks, "n_tasks", who="permuted_stream", low=1, integer=True)
    shape = data.x_train.shape[1:]
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.arange(shape.numel())] + [torch.randperm(shape.numel(), generator=generator)
                                             for _ in range(n_tasks - 1)]

    def permute(perm):
        return lambda x: x.reshape(len(x), -1)[:, perm].reshape(len(x), *shape)

    return _transformed_stream(data, [permute(p) for p in perms], scenario, f"permuted-{data.name}")


def rotate_images(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (batch, channels, H, W) images counter-clockwise as displayed (row 0 on top) about
    their centre (bilinear, zeros outside); 90 degrees equals ``torch.rot90(x, 1, (2, 3))``."""
    x = check_tensor(x, "x", who="rotate_images", ndim=4, dtype="float")
    degrees = check_number(degrees, "degrees", who="rotate_images")
    angle = torch.tensor(degrees * torch.pi / 180.0, dtype=x.dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates: the inverse rotation
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(())]),
                         torch.stack([sin, cos, torch.zeros(())])]).to(x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False)


def rotated_stream(data: ImageData, degrees: Sequence[float] = (0.0, 45.0, 90.0, 135.0, 180.0), *,
                   scenario: str = "domain-incremental") -> TaskStream:
    """One task per angle in ``degrees``: every image rotated by that angle."""
    if not degrees:
        raise PriorlabError("rotated_stream: degrees is empty; give one angle per task")
    transforms = [lambda x, d=float(d): rotate_images(x, d) for d in degrees]
    return _transformed_stream(data, transforms, scenario, f"rotated-{data.name}")


def mask_logits(logits: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """``logits`` with every column outside ``classes`` set to -inf (argmax stays inside)."""
    logits = check_tensor(logits, "logits", who="mask_logits", ndim=2, dtype="float")
    index = torch.as_tensor(list(classes), dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= logits.shape[1]:
        raise PriorlabError(f"mask_logits: classes {list(classes)} must be non-empty and lie in "
                            f"0..{logits.shape[1] - 1} (the logits' width)")
    masked = torch.full_like(logits, float("-inf"))
    masked[:, index] = logits[:, index]
    return masked


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, in batches (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits


def task_accuracy(model: nn.Module, stream: TaskStream, task_index: int, trained_upto: int, *,
                  split: str = "test", batch_size: int = 512) -> float:
    """Accuracy on task ``task_index``'s ``split`` after training tasks ``0..trained_upto``,
    with the argmax over ``stream.allowed_classes(task_index, trained_upto)``."""
    if split not in _SPLITS:
        raise did_you_mean(split, _SPLITS, "split")
    task = stream[_check_task_index(stream, task_index)]
    x, y = getattr(task, f"x_{split}"), getattr(task, f"y_{split}")
    logits = predict(model, x, batch_size=batch_size)
    if logits.ndim != 2 or logits.shape[1] < stream.num_classes:
        raise PriorlabError(f"task_accuracy: the model returns logits of shape "
                            f"{tuple(logits.shape)}; stream {stream.name!r} needs (batch, >= "
                            f"{stream.num_classes})")
    masked = mask_logits(logits, stream.allowed_classes(task_index, trained_upto))
    return float((masked.argmax(1) == y).float().mean())


def accuracy_row(model: nn.Module, stream: TaskStream, trained_upto: int, *,
                 split: str = "test", batch_size: int = 512) -> list[float]:
    """Row ``trained_upto`` of the accuracy matrix: accuracy on every task of the stream after
    training tasks ``0..trained_upto``. Entries for future class-incremental tasks are 0 (their
    classes are not yet allowed); they are not used by the metrics."""
    trained_upto = _check_task_index(stream, trained_upto)
    return [task_accuracy(model, stream, j, trained_upto, split=split, batch_size=batch_size)
            for j in range(len(stream))]
