"""The tiny model, data and adapters the trainer-bridge tests share (Lightning, Accelerate)."""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from priorlab.methods.gg_prior import BackSlash
from priorlab.methods.random_teacher import RandomTeacher

EPOCHS = 3
ATOL, RTOL = 1e-6, 1e-5  # float32; the same operations in the same order


def tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def tiny_loader():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def tiny_adapters():
    return [RandomTeacher(tiny_net(1), weight=0.5), BackSlash(rate=0.05)]
