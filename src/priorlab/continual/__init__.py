"""Continual learning: task streams, the accuracy-matrix protocol and rehearsal-free regularisers.

priorlab's own small protocol (avalanche needs a torchvision that cannot sit beside the CPU
torch pin): see :mod:`priorlab.continual.streams` and :mod:`priorlab.continual.metrics`.
"""

from priorlab.continual.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    plot_accuracy_matrix,
)
from priorlab.continual.regularisers import (
    ATTENTION_QKV,
    ParameterAnchor,
    diagonal_fisher,
    feature_distillation,
    prediction_distillation,
    select_parameters,
)
from priorlab.continual.streams import (
    SCENARIOS,
    Task,
    TaskStream,
    accuracy_row,
    mask_logits,
    permuted_stream,
    predict,
    rotate_images,
    rotated_stream,
    split_digits,
    split_fashion_mnist,
    split_stream,
    task_accuracy,
)

__all__ = [
    "ATTENTION_QKV", "ParameterAnchor", "diagonal_fisher", "feature_distillation",
    "prediction_distillation", "select_parameters",
    "SCENARIOS", "Task", "TaskStream", "accuracy_row", "average_accuracy", "backward_transfer",
    "forgetting", "forgetting_per_task", "forward_transfer", "mask_logits", "permuted_stream",
    "plot_accuracy_matrix", "predict", "rotate_images", "rotated_stream", "split_digits",
    "split_fashion_mnist", "split_stream", "task_accuracy",
]
