"""Small networks the reproductions share (CPU-sized)."""

from __future__ import annotations

from torch import nn


def mlp(in_features: int, hidden: int | list[int], out_features: int, *, bias: bool = True,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Flatten, then Linear-activation blocks of the given hidden widths, then a Linear head."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    prev = in_features
    for width in widths:
        layers += [nn.Linear(prev, width, bias=bias), activation()]
        prev = width
    layers.append(nn.Linear(prev, out_features, bias=bias))
    return nn.Sequential(*layers)


class SmallCNN(nn.Sequential):
    """Two conv blocks and a linear head for 1-channel images (8x8 digits or 28x28 MNIST)."""

    def __init__(self, num_classes: int = 10, channels: int = 32, image_size: int = 28):
        pooled = image_size // 4
        super().__init__(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * channels * pooled * pooled, num_classes))
