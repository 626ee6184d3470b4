"""HyperZ·Z·W operator and a small Terminator network (slow-fast, no residuals).

Zhang et al., "HyperZ·Z·W Operator Connects Slow-Fast Networks for Full Context Interaction",
arXiv:2401.17948 (official code: github.com/hyperevolnet/Terminator). A *slow* network, a
coordinate-based implicit MLP (MAGNet: products of sinusoidal filters of the kernel coordinates),
emits hyper-kernels ``W``; the *fast* network multiplies them elementwise with its hidden
activations ``Z`` (``Z·W``, the context-dependent weights) and then uses that product on ``Z``:

* global:      ``(Z ⊙ W_g) @ V``  — a matmul over the spatial grid with a full-size hyper-kernel
  (``W_g`` is H x W, the image size), so every pixel sees the whole image in one layer;
* local:       ``conv_depthwise(V, W_l(Z))`` — a sliding-window kernel the slow net emits from
  the coordinates, modulated by a pooled summary of ``Z`` (context-dependent);
* elementwise: ``Z ⊙ W_g ⊙ Z`` (the paper's HyperZ·Z·W with two elementwise products).

:class:`SFNEBlock` (slow-fast neural encoding) concatenates these branches, compresses them with a
1x1 bottleneck, standardises each sample (zero-mean features) and applies GELU. Blocks are stacked without
residual connections and without downsampling; :class:`Terminator` adds global average pooling
and a linear head. See the card (``priorlab.methods.hyperzzw``) for what is left out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor

# The official MAGNet draws each filter's frequency scale from Gamma(alpha / (layer + 1), beta).
_GAMMA_ALPHA, _GAMMA_BETA = 6.0, 1.0
# Official S-renormalisation: out.detach() * 1 + 0.1 * normalize(out); its alphas/betas are
# kept in a plain list in the official code, so they are never trained: constants here.
_RENORM_ALPHA, _RENORM_BETA = 1.0, 0.1


def _count(value, name: str, who: str, low: int = 1) -> int:
    return check_number(value, name, who=who, low=low, integer=True)


def coordinate_grid(size: int, dims: int = 2) -> torch.Tensor:
    """Kernel coordinates in [-1, 1]: shape ``(1, dims, size, ..., size)``."""
    axes = [torch.linspace(-1.0, 1.0, size)] * dims
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0).unsqueeze(0)


class MAGNet(nn.Module):
    """Slow network: a multiplicative Gabor-like implicit MLP of the kernel coordinates (2-D).

    ``h_0 = sin(F_0 c)``, ``h_i = sin(F_i c) * (L_i h_{i-1}) + b``, ``W = L_out h_n`` with
    ``c`` the coordinate grid, all maps 1x1 convolutions over the grid. ``F_i`` weights are
    scaled by ``2 pi omega_0 gamma`` (gamma ~ Gamma(6 / (i + 1), 1)) as in the official MAGNet;
    the output layer is scaled by ``1 / sqrt(size^2)`` (Chang et al. 2020 initialisation), so a
    full-size hyper-kernel starts at the scale of an average. With ``context_channels`` the
    hidden state is modulated at each layer by a pooled, batch-averaged summary of the fast
    activations (the official ``MAGNet_L``: context-dependent local hyper-kernels).
    """

    def __init__(self, size: int, out_channels: int, hidden: int = 32, num_layers: int = 2,
                 omega_0: float = 1.0, context_channels: int = 0):
        super().__init__()
        who = "MAGNet"
        self.size = _count(size, "size", who)
        out_channels, hidden = _count(out_channels, "out_channels", who), _count(hidden, "hidden", who)
        num_layers = _count(num_layers, "num_layers", who)
        omega_0 = check_number(omega_0, "omega_0", who=who, low=0.0, low_open=True)
        self.context_channels = _count(context_channels, "context_channels", who, low=0)
        self.filters = nn.ModuleList()
        for layer in range(num_layers + 1):
            conv = nn.Conv2d(2, hidden, 1)
            gamma = torch.distributions.Gamma(_GAMMA_ALPHA / (layer + 1), _GAMMA_BETA).sample((hidden, 2))
            with torch.no_grad():
                conv.weight.mul_(2 * math.pi * omega_0 * gamma.view(hidden, 2, 1, 1))
                conv.bias.zero_()
            self.filters.append(conv)
        self.linears = nn.ModuleList(nn.Conv2d(hidden, hidden, 1) for _ in range(num_layers))
        for lin in self.linears:
            nn.init.kaiming_uniform_(lin.weight, nonlinearity="linear")
            nn.init.constant_(lin.bias, 1.0)
        self.output = nn.Conv2d(hidden, out_channels, 1)
        nn.init.kaiming_uniform_(self.output.weight, nonlinearity="linear")
        with torch.no_grad():
            self.output.weight.mul_(1.0 / self.size)  # sqrt(1 / size^2)
            self.output.bias.zero_()
        self.bias = nn.Parameter(torch.zeros(1, 1, self.size, self.size))
        if self.context_channels:
            self.context_reduce = nn.Conv2d(self.context_channels, hidden, 1)
            self.context_fc = nn.Conv2d(hidden, hidden, 1)
            self.context_linears = nn.ModuleList(nn.Conv2d(hidden, hidden, 1) for _ in range(num_layers))
            for lin in self.context_linears:
                nn.init.kaiming_uniform_(lin.weight, nonlinearity="linear")
                nn.init.constant_(lin.bias, 1.0)
        self.register_buffer("coords", coordinate_grid(self.size), persistent=False)

    def forward(self, context: torch.Tensor | None = None) -> torch.Tensor:
        """Return the hyper-kernel, shape ``(1, out_channels, size, size)``."""
        if self.context_channels:
            if context is None:
                raise PriorlabError("MAGNet built with context_channels needs the fast activations")
            summary = F.adaptive_avg_pool2d(context, self.size)
            summary = F.gelu(self.context_fc(self.context_reduce(summary).mean(0, keepdim=True)))
        out = torch.sin(self.filters[0](self.coords))
        for i, lin in enumerate(self.linears):
            out = torch.sin(self.filters[i + 1](self.coords)) * lin(out) + self.bias
            if self.context_channels:
                # unit norm per hidden channel over the kernel grid (official normalize())
                unit = F.normalize(out.flatten(2), dim=2).view_as(out)
                out = _RENORM_ALPHA * out.detach() + _RENORM_BETA * unit
                out = out * self.context_linears[i](summary)
        return self.output(out)


def hyperzzw_global(z: torch.Tensor, hyper_kernel: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Global HyperZ·Z·W: ``(z ⊙ W) @ value`` over the (square) spatial grid, per channel.

    ``z`` and ``value`` are ``(B, C, S, S)``; ``hyper_kernel`` broadcasts to them (``(1, C, S, S)``).
    """
    who = "hyperzzw_global"
    check_tensor(z, "z", who=who, ndim=4, dtype="float")
    size = z.shape[-1]
    check_tensor(value, "value", who=who, shape=(z.shape[0], z.shape[1], size, size), dtype="float",
                 hint="the global operator needs square maps of the same size as z")
    check_tensor(hyper_kernel, "hyper_kernel", who=who, shape=(None, None, size, size), dtype="float")
    return torch.matmul(z * hyper_kernel, value)


def hyperzzw_elementwise(z: torch.Tensor, hyper_kernel: torch.Tensor) -> torch.Tensor:
    """Elementwise HyperZ·Z·W: ``z ⊙ W ⊙ z`` (two elementwise products)."""
    return z * hyper_kernel * z


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-channel zero mean and unit variance (instance standardisation)."""
    return F.instance_norm(x, eps=1e-5)


class RGU(nn.Module):
    """Recursive gated unit (official fast-kernel MLP): ``W_y(gelu(std(W_k z ⊙ W_q W_v z)) + b)``."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.k, self.v, self.q, self.y = (nn.Conv2d(channels, channels, 1) for _ in range(4))
        for conv in (self.k, self.v, self.q, self.y):
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)
        self.bias = nn.Parameter(torch.zeros(1, 1, size, size))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        gated = F.gelu(_standardise(self.k(z) * self.q(self.v(z)))) + self.bias
        return self.y(gated)


class LocalHyperZZW(nn.Module):
    """Local HyperZ·Z·W: a depthwise conv whose kernel the slow net emits from the context.

    ``feat = gelu(std(mix(conv_dw(value, W_l(context))))) + b``.
    """

    def __init__(self, channels: int, kernel_size: int, hidden: int = 16, num_layers: int = 2):
        super().__init__()
        kernel_size = _count(kernel_size, "kernel_size", "LocalHyperZZW")
        if kernel_size % 2 == 0:
            raise PriorlabError(f"LocalHyperZZW: kernel_size must be odd (same padding), got {kernel_size}")
        self.slow = MAGNet(kernel_size, channels, hidden, num_layers, context_channels=channels)
        self.mix = nn.Conv2d(channels, channels, 1)
        nn.init.kaiming_normal_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, context: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        kernel = self.slow(context).transpose(0, 1)  # (C, 1, k, k): one kernel per channel
        feat = F.conv2d(value, kernel, padding=kernel.shape[-1] // 2, groups=value.shape[1])
        return F.gelu(_standardise(self.mix(feat))) + self.bias


class SFNEBlock(nn.Module):
    """Slow-fast neural encoding block: multi-branch HyperZ·Z·W, bottleneck, no residual.

    Branches (each ``in_channels`` wide, concatenated): global ``(z ⊙ W_g) @ fast`` with the fast
    value from an RGU on ``z`` and ``z ⊙ W_g``; global ``(z ⊙ W_g) @ std(mix(z))``; its SiLU-type
    gate ``sigmoid(g) g``; the fast value itself; elementwise ``z ⊙ W_g ⊙ z``; and one local
    branch per entry of ``local_sizes``. A 1x1 bottleneck maps them to ``out_channels``, then
    per-sample standardisation (over channels and positions) and GELU.
    """

    def __init__(self, in_channels: int, out_channels: int, size: int,
                 local_sizes: tuple[int, ...] = (3, 5), slow_hidden: int = 32,
                 slow_layers: int = 2, local_hidden: int = 16):
        super().__init__()
        who = "SFNEBlock"
        in_channels = _count(in_channels, "in_channels", who)
        out_channels = _count(out_channels, "out_channels", who)
        self.size = _count(size, "size", who)
        self.slow_global = MAGNet(self.size, in_channels, slow_hidden, slow_layers)
        self.rgu_fast, self.rgu_slow = RGU(in_channels, self.size), RGU(in_channels, self.size)
        self.mixer = nn.Conv2d(in_channels, in_channels, 1)
        nn.init.kaiming_normal_(self.mixer.weight)
        nn.init.zeros_(self.mixer.bias)
        self.local = nn.ModuleList(LocalHyperZZW(in_channels, k, local_hidden) for k in local_sizes)
        branches = 5 + len(self.local)
        self.bottleneck = nn.Conv2d(in_channels * branches, out_channels, 1)
        nn.init.kaiming_normal_(self.bottleneck.weight)
        nn.init.zeros_(self.bottleneck.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor(z, "z", who="SFNEBlock", ndim=4, dtype="float", finite=True,
                     shape=(None, self.mixer.in_channels, self.size, self.size))
        hyper_kernel = self.slow_global()
        context = z * hyper_kernel  # Z·W: context-dependent weights
        fast = _standardise(self.rgu_slow(context) + self.rgu_fast(z))
        mixed = _standardise(self.mixer(z))
        out = torch.matmul(context, fast)
        branches = [out, fast, torch.matmul(context, mixed), torch.sigmoid(out) * out,
                    hyperzzw_elementwise(z, hyper_kernel)]
        inputs = (mixed, z)  # alternate the local branches' values, as the official layer does
        branches += [local(z, inputs[i % 2]) for i, local in enumerate(self.local)]
        # per-sample standardisation over all channels and positions (zero-mean features) that,
        # unlike instance standardisation, keeps each channel's spatial mean for the pooled head
        return F.gelu(F.group_norm(self.bottleneck(torch.cat(branches, 1)), 1, eps=1e-5))


class Terminator(nn.Module):
    """Stack of :class:`SFNEBlock` at full resolution (no residuals, no pooling) + linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28,
                 widths: tuple[int, ...] = (8, 16), **block_kwargs):
        super().__init__()
        who = "Terminator"
        num_classes = _count(num_classes, "num_classes", who, low=2)
        if not widths:
            raise PriorlabError("Terminator: widths must name at least one block width, e.g. (8, 16)")
        channels = [_count(in_channels, "in_channels", who)] + [_count(w, "width", who) for w in widths]
        self.blocks = nn.Sequential(*(SFNEBlock(a, b, image_size, **block_kwargs)
                                      for a, b in zip(channels[:-1], channels[1:])))
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x).mean((2, 3)))
