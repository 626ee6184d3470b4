"""The continual-learning protocol: streams, masked evaluation, metrics on hand-made matrices."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from priorlab.continual import (
    accuracy_row,
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    mask_logits,
    permuted_stream,
    plot_accuracy_matrix,
    rotate_images,
    rotated_stream,
    split_digits,
    split_stream,
    task_accuracy,
)
from priorlab.data.images import load_images
from priorlab.errors import PriorlabError

NAN = math.nan
# after task 0: 0.9 on task 0; after task 1: 0.5 / 0.8; after task 2: 0.6 / 0.7 / 0.95
R = [[0.9, NAN, NAN], [0.5, 0.8, NAN], [0.6, 0.7, 0.95]]
R_FULL = [[0.9, 0.3, 0.1], [0.5, 0.8, 0.4], [0.6, 0.7, 0.95]]


def test_metrics_known_values():
    assert average_accuracy(R) == pytest.approx((0.6 + 0.7 + 0.95) / 3)
    # f_0 = max(0.9, 0.5) - 0.6, f_1 = 0.8 - 0.7
    np.testing.assert_allclose(forgetting_per_task(R), [0.3, 0.1])
    assert forgetting(R) == pytest.approx(0.2)
    assert backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.7 - 0.8)) / 2)
    assert forward_transfer(R_FULL, [0.1, 0.2, 0.25]) == pytest.approx(((0.3 - 0.2) + (0.4 - 0.25)) / 2)


def test_forgetting_ignores_accuracy_before_a_task_was_learned():
    # task 1 scored 0.99 before it was trained (row 0): that is not knowledge to forget
    m = [[0.9, 0.99, 0.1], [0.8, 0.5, 0.2], [0.7, 0.5, 0.9]]
    np.testing.assert_allclose(forgetting_per_task(m), [0.2, 0.0])


def test_no_forgetting_matrix():
    m = np.triu(np.full((4, 4), NAN), 1) + np.tril(np.full((4, 4), 0.8))
    m = np.where(np.isnan(m), NAN, 0.8)
    assert forgetting(m) == 0.0 and backward_transfer(m) == 0.0 and average_accuracy(m) == pytest.approx(0.8)


@pytest.mark.parametrize("bad", [[[0.9, NAN], [NAN, 0.8]], [[1.2]], [[0.5, 0.5]], "x", [[0.9]]])
def test_metric_bad_input(bad):
    with pytest.raises(PriorlabError):
        forgetting(bad)


def test_forward_transfer_needs_upper_triangle():
    with pytest.raises(PriorlabError, match="above the diagonal"):
        forward_transfer(R, [0.1, 0.1, 0.1])
    with pytest.raises(PriorlabError, match="one finite accuracy per task"):
        forward_transfer(R_FULL, [0.1, 0.1])


def test_plot_accuracy_matrix(tmp_path):
    fig = plot_accuracy_matrix(R, path=tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 0
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_split_digits_partitions_classes():
    stream = split_digits(2)
    assert len(stream) == 5 and stream.num_classes == 10
    assert [t.classes for t in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for task in stream:
        assert set(task.y_train.tolist()) == set(task.classes)
        assert set(task.y_test.tolist()) == set(task.classes)
    assert stream.seen_classes(1) == (0, 1, 2, 3)
    data = load_images("digits")
    assert sum(len(t.y_train) for t in stream) == len(data.y_train)


def test_split_stream_class_order_and_errors():
    data = load_images("digits")
    stream = split_stream(data, 3, class_order=[9, 8, 7, 0, 1, 2], scenario="task-incremental")
    assert [t.classes for t in stream] == [(7, 8, 9), (0, 1, 2)]
    with pytest.raises(PriorlabError, match="multiple"):
        split_stream(data, 4, class_order=[0, 1, 2])
    with pytest.raises(PriorlabError, match="distinct"):
        split_stream(data, 2, class_order=[0, 0])
    with pytest.raises(PriorlabError, match="class-increm"):
        split_stream(data, 2, scenario="class-incremantal")
    with pytest.raises(PriorlabError, match="permuted_stream"):
        split_stream(data, 2, scenario="domain-incremental")


class _Fixed(nn.Module):
    """Returns fixed logits per input: input x (batch, 1) holds the row index into ``table``."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def forward(self, x):
        return self.table[x[:, 0].long()]


def _toy_stream(scenario):
    from priorlab.continual import Task, TaskStream
    x = torch.tensor([[0.0], [1.0]])
    tasks = (Task(0, (0, 1), x, torch.tensor([0, 1]), x, torch.tensor([0, 1]), x, torch.tensor([0, 1])),
             Task(1, (2, 3), x, torch.tensor([2, 3]), x, torch.tensor([2, 3]), x, torch.tensor([2, 3])))
    return TaskStream(tasks, scenario, 4, "toy")


def test_task_aware_vs_class_incremental_evaluation():
    # sample 0 prefers class 2 overall but class 0 among {0, 1}; sample 1 prefers class 1
    model = _Fixed([[1.0, 0.0, 5.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    ti, ci = _toy_stream("task-incremental"), _toy_stream("class-incremental")
    assert task_accuracy(model, ti, 0, trained_upto=1) == 1.0
    assert task_accuracy(model, ci, 0, trained_upto=0) == 1.0  # class 2 not seen yet
    assert task_accuracy(model, ci, 0, trained_upto=1) == 0.5  # now class 2 wins sample 0
    assert accuracy_row(model, ci, 0) == [1.0, 0.0]  # task 1's classes are not allowed yet


def test_mask_logits():
    masked = mask_logits(torch.tensor([[1.0, 2.0, 3.0]]), [0, 1])
    assert masked[0, 2] == float("-inf") and masked.argmax() == 1
    with pytest.raises(PriorlabError):
        mask_logits(torch.zeros(1, 3), [3])


def test_permuted_and_rotated_streams():
    data = load_images("digits")
    perm = permuted_stream(data, 3, seed=1)
    assert perm.num_classes == 10 and torch.equal(perm[0].x_train, data.x_train)
    assert not torch.equal(perm[1].x_train, data.x_train)
    # a permutation keeps each image's pixel values
    assert torch.allclose(perm[2].x_train.flatten(1).sort(1).values, data.x_train.flatten(1).sort(1).values)
    ci = permuted_stream(data, 2, scenario="class-incremental")
    assert ci.num_classes == 20 and ci[1].classes == tuple(range(10, 20))
    assert int(ci[1].y_train.min()) >= 10
    rot = rotated_stream(data, (0.0, 90.0))
    assert torch.allclose(rot[0].x_train, data.x_train, atol=1e-5)
    # 90 degrees counter-clockwise is torch.rot90 on (H, W) for an even-sized image
    assert torch.allclose(rotate_images(data.x_train[:4], 90.0), torch.rot90(data.x_train[:4], 1, (2, 3)),
                          atol=1e-5)
    with pytest.raises(PriorlabError):
        rotated_stream(data, ())
