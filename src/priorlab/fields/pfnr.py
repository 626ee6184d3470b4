"""PFNR: a NeRV video representation that learns videos in sessions without forgetting.

Kang et al., "Progressive Fourier Neural Representation for Sequential Video Compilation",
ICLR 2024, arXiv:2306.11305; official code github.com/ihaeyong/PFNR (``model_subnet_nerv.py``,
``model/subnet.py``, ``neuralop/spectral_convolution.py``, ``train_nerv.py``).

- NeRV (Chen et al., NeurIPS 2021): a frame index ``t`` in [0, 1] goes through the positional
  embedding ``gamma(t) = (sin(b^l pi t), cos(b^l pi t))_{l < L}`` (b = 1.25, L = 40), an MLP
  stem to a small feature map, then blocks ``conv3x3 -> PixelShuffle(s) -> act`` that upsample
  it to the frame. PFNR adds the session's embedding ``gamma((k + 1) / (K + 1))`` to the input and
  gives each session its own 1x1 output head.
- Winning subnetworks (WSN, Kang et al. ICML 2022): every shared weight ``w`` has a score ``s``;
  session ``k`` uses ``w * m_k`` with ``m_k`` = 1 on the ``c`` fraction of entries with the
  largest ``|s|`` (straight-through gradient to ``s``). After session ``k`` its mask is stored
  and the weights it used are frozen (their gradients are zeroed) for all later sessions, which
  may still reuse them. Decoding session ``k`` with its stored mask therefore gives exactly the
  same frames forever: zero forgetting by construction.
- Fourier subneural operator (FSO): one block is replaced by a spectral layer: ``rfft2`` of the
  feature map, the lowest Fourier modes multiplied by complex weights ``W_re * m_re + i W_im * m_im``
  (both parts masked as above), and ``irfft2`` on a ``stride`` times larger grid (the block's
  upsampling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.validation import check_number, check_tensor


class _TopScores(torch.autograd.Function):
    """Binary mask of the ``keep`` largest scores (ties at the threshold all kept, as in the
    official ``percentile``); the gradient passes straight through."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: int) -> torch.Tensor:
        flat = scores.reshape(-1)
        threshold = flat.kthvalue(flat.numel() - keep + 1).values  # O(n), unlike a sort or topk
        return (scores >= threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def winning_mask(scores: torch.Tensor, capacity: float) -> torch.Tensor:
    """The WSN mask: 1 on the ``ceil(capacity * n)`` entries with the largest ``|scores|``, else 0;
    differentiable in ``scores`` by the straight-through estimator."""
    check_tensor(scores, "scores", who="winning_mask", dtype="float", non_empty=True, finite=True)
    capacity = check_number(capacity, "capacity", who="winning_mask", low=0.0, high=1.0, low_open=True)
    return _TopScores.apply(scores.abs(), max(1, math.ceil(capacity * scores.numel())))


class SubnetWeight(nn.Module):
    """A weight tensor with a score per entry, the masks of finished sessions, and the frozen set.

    ``capacity=None`` makes it a plain weight (no masks, nothing frozen: the fine-tuning baseline).
    """

    def __init__(self, weight: torch.Tensor, capacity: float | None, sessions: int):
        super().__init__()
        self.capacity = capacity
        self.weight = nn.Parameter(weight)
        if capacity is None:
            return
        scores = torch.empty_like(weight)
        nn.init.kaiming_uniform_(scores.view(weight.shape[0], -1), a=math.sqrt(5))
        self.scores = nn.Parameter(scores)
        self.register_buffer("masks", torch.zeros(sessions, *weight.shape, dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros(weight.shape, dtype=torch.bool))

    def forward(self, session: int, finished: int) -> torch.Tensor:
        if self.capacity is None:
            return self.weight
        if session < finished:  # decode a finished session with its stored mask
            return self.weight * self.masks[session]
        # weights used by a finished session never change again: no gradient reaches them
        weight = torch.where(self.frozen, self.weight.detach(), self.weight)
        return weight * winning_mask(self.scores, self.capacity)

    @torch.no_grad()
    def store(self, session: int) -> None:
        if self.capacity is not None:
            mask = winning_mask(self.scores, self.capacity).bool()
            self.masks[session] = mask
            self.frozen |= mask


def positional_embedding(t: torch.Tensor, levels: int = 40, base: float = 1.25) -> torch.Tensor:
    """NeRV's embedding of positions ``t`` (B,) in [0, 1]: (B, 2 * levels), sin/cos interleaved."""
    angles = t[:, None] * math.pi * base ** torch.arange(levels, dtype=t.dtype, device=t.device)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)


class FourierSubOperator(nn.Module):
    """Spectral upsampling layer ``(B, in, H, W) -> (B, out, stride H, stride W)`` with WSN masks
    on the real and imaginary parts of its Fourier weights (PFNR's FSO).

    Keeps ``modes = (rows, cols)`` frequencies: the ``rows`` lowest of the first FFT axis (half
    positive, half negative) and the ``cols`` lowest of the real FFT axis; default: all of them.
    """

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int], stride: int,
                 capacity: float | None, sessions: int, modes: tuple[int, int] | None = None):
        super().__init__()
        height, width = size
        rows, cols = modes if modes is not None else (height, width // 2 + 1)
        if not (1 <= rows <= height and 1 <= cols <= width // 2 + 1):
            raise PriorlabError(f"FourierSubOperator: modes {modes} do not fit a {height}x{width} map "
                                f"(at most ({height}, {width // 2 + 1}))")
        self.size, self.stride = (height, width), stride
        self.up, self.down = (rows + 1) // 2, rows // 2  # non-negative and negative row frequencies
        self.cols = cols
        # unit gain: each output mode sums in_channels complex products
        std = 1.0 / math.sqrt(2 * in_channels)
        shape = (in_channels, out_channels, rows, cols)
        self.real = SubnetWeight(torch.randn(shape) * std, capacity, sessions)
        self.imag = SubnetWeight(torch.randn(shape) * std, capacity, sessions)

    def forward(self, x: torch.Tensor, session: int, finished: int) -> torch.Tensor:
        height, width = self.size
        spectrum = torch.fft.rfft2(x, norm="forward")
        low = torch.cat([spectrum[:, :, :self.up, :self.cols],
                         spectrum[:, :, height - self.down:, :self.cols]], dim=2)
        weight = torch.complex(self.real(session, finished), self.imag(session, finished))
        mixed = torch.einsum("bihw,iohw->bohw", low, weight)
        out_h, out_w = height * self.stride, width * self.stride
        out = mixed.new_zeros(x.shape[0], mixed.shape[1], out_h, out_w // 2 + 1)
        out[:, :, :self.up, :self.cols] = mixed[:, :, :self.up]
        if self.down:
            out[:, :, out_h - self.down:, :self.cols] = mixed[:, :, self.up:]
        # "forward" normalisation on both transforms keeps the amplitude on the larger grid
        return torch.fft.irfft2(out, s=(out_h, out_w), norm="forward")

    def stores(self):
        return (self.real, self.imag)


class PFNR(nn.Module):
    """A NeRV with per-session winning subnetworks (WSN) and optionally one FSO block.

    Args:
        frame_size: (height, width) of the frames; must equal ``base_size`` times the strides.
        channels: 3 for RGB, 1 for grey.
        sessions: how many videos (sessions) it can learn, one head each.
        capacity: ``c``, the fraction of each layer's weights a session selects (official runs
            use 0.1 to 0.7); ``None`` gives a plain NeRV, fine-tuned across sessions.
        fso_block: index of the block replaced by a Fourier subneural operator (the official
            script replaces block 1); ``None`` for none (plain WSN).
        base_size, base_channels: the stem's output feature map; widths, strides: the blocks'.
        stem_hidden: hidden width of the MLP stem; embed_levels, embed_base: the embedding.

    ``forward(t, session)`` decodes frames at positions ``t`` (B,) in [0, 1] of a session: with
    its stored masks once :meth:`end_session` has been called for it, else with the live masks
    (training). Sessions are learnt in order 0, 1, ...; use a fresh optimiser for each, without
    weight decay, so frozen weights stay exactly as they were.
    """

    def __init__(self, frame_size: tuple[int, int] = (36, 64), channels: int = 3, sessions: int = 3,
                 capacity: float | None = 0.5, fso_block: int | None = 1,
                 base_size: tuple[int, int] = (9, 16), base_channels: int = 16,
                 widths: tuple[int, ...] = (32, 16), strides: tuple[int, ...] = (2, 2),
                 stem_hidden: int = 256, embed_levels: int = 40, embed_base: float = 1.25):
        super().__init__()
        who = "PFNR"
        self.sessions = check_number(sessions, "sessions", who=who, low=1, integer=True)
        if capacity is not None:
            capacity = check_number(capacity, "capacity", who=who, low=0.0, high=1.0, low_open=True)
        self.capacity = capacity
        self.channels = check_number(channels, "channels", who=who, low=1, integer=True)
        self.embed_levels = check_number(embed_levels, "embed_levels", who=who, low=1, integer=True)
        self.embed_base = check_number(embed_base, "embed_base", who=who, low=0.0, low_open=True)
        if len(widths) != len(strides) or not widths:
            raise PriorlabError(f"{who}: widths {tuple(widths)} and strides {tuple(strides)} need one "
                                "entry per block")
        if fso_block is not None and not (isinstance(fso_block, int) and 0 <= fso_block < len(widths)):
            raise PriorlabError(f"{who}: fso_block must be a block index in [0, {len(widths)}) or None, "
                                f"got {fso_block!r}")
        scale = math.prod(int(s) for s in strides)
        if tuple(frame_size) != (base_size[0] * scale, base_size[1] * scale):
            raise PriorlabError(f"{who}: frame_size {tuple(frame_size)} must be base_size {tuple(base_size)} "
                                f"times the strides' product {scale}")
        self.frame_size, self.base_size = tuple(frame_size), tuple(base_size)
        self.base_channels = base_channels
        self.strides, self.fso_block = tuple(int(s) for s in strides), fso_block
        self.register_buffer("finished", torch.zeros((), dtype=torch.long))

        def subnet(weight: torch.Tensor) -> SubnetWeight:
            return SubnetWeight(weight, capacity, self.sessions)

        stem_out = base_channels * base_size[0] * base_size[1]
        self.stem = nn.ModuleList([subnet(nn.Linear(4 * embed_levels, stem_hidden, bias=False).weight.data),
                                   subnet(nn.Linear(stem_hidden, stem_out, bias=False).weight.data)])
        self.blocks = nn.ModuleList()
        ngf, size = base_channels, tuple(base_size)
        for index, (width, stride) in enumerate(zip(widths, self.strides)):
            if index == fso_block:
                self.blocks.append(FourierSubOperator(ngf, width, size, stride, capacity, self.sessions))
            else:
                conv = nn.Conv2d(ngf, width * stride * stride, 3, padding=1, bias=False)
                self.blocks.append(subnet(conv.weight.data))
            ngf, size = width, (size[0] * stride, size[1] * stride)
        self.heads = nn.ModuleList(nn.Conv2d(ngf, channels, 1, bias=False) for _ in range(self.sessions))

    def _check(self, t: torch.Tensor, session: int) -> int:
        check_tensor(t, "t", who="PFNR", ndim=1, dtype="float", non_empty=True, finite=True,
                     hint="pass frame positions in [0, 1], one per frame")
        session = check_number(session, "session", who="PFNR", low=0, high=self.sessions - 1, integer=True)
        if session > int(self.finished):
            raise PriorlabError(f"PFNR: session {session} cannot start before session {int(self.finished)} "
                                "has ended; learn sessions in order and call end_session after each")
        return session

    def forward(self, t: torch.Tensor, session: int = 0) -> torch.Tensor:
        session = self._check(t, session)
        done = int(self.finished)
        task = torch.full_like(t, (session + 1) / (self.sessions + 1))
        x = torch.cat([positional_embedding(t, self.embed_levels, self.embed_base),
                       positional_embedding(task, self.embed_levels, self.embed_base)], dim=1)
        x = F.relu(F.linear(x, self.stem[0](session, done)))
        x = F.relu(F.linear(x, self.stem[1](session, done)))
        x = x.view(len(t), self.base_channels, *self.base_size)
        for block, stride in zip(self.blocks, self.strides):
            if isinstance(block, FourierSubOperator):
                x = block(x, session, done)
            else:
                x = F.pixel_shuffle(F.conv2d(x, block(session, done), padding=1), stride)
            x = F.silu(x)
        return (torch.tanh(self.heads[session](x)) + 1) / 2

    def subnet_weights(self) -> list[SubnetWeight]:
        return [m for m in self.modules() if isinstance(m, SubnetWeight)]

    @torch.no_grad()
    def end_session(self, session: int) -> None:
        """Store the session's masks and freeze the weights they select."""
        if session != int(self.finished) or session >= self.sessions:
            raise PriorlabError(f"PFNR.end_session: the session in progress is {int(self.finished)}, "
                                f"got {session}")
        for weight in self.subnet_weights():
            weight.store(session)
        self.finished += 1

    def used_capacity(self) -> float:
        """Fraction of the shared weights frozen by finished sessions (0 for a plain NeRV)."""
        if self.capacity is None:
            return 0.0
        frozen = sum(int(w.frozen.sum()) for w in self.subnet_weights())
        return frozen / sum(w.frozen.numel() for w in self.subnet_weights())
