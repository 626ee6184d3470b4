"""T-JEPA: augmentation-free self-supervised learning for tabular data.

Thimonier, De Melo Costa, Popineau, Rimmel & Doan, "T-JEPA: Augmentation-Free Self-Supervised
Learning for Tabular Data", ICLR 2025, arXiv:2410.05016; official code github.com/jose-melo/t-jepa
(MIT; ``src/encoder.py``, ``src/predictors.py``, ``src/mask.py``, ``src/train.py``).

Each row becomes one token per feature (numeric ``x_j w_j + b_j``, categorical an embedding row
plus a bias) and ``n_reg_tokens`` learned *regularisation tokens* (the official ``[CLS]`` rows)
that every encoder input keeps. Per batch a context share and a target share of the features are
drawn; per row a context subset ``C`` and ``num_targets`` target subsets ``T_k`` disjoint from it.
The context encoder ``f`` sees the regularisation tokens plus the tokens in ``C``; the target
encoder ``f_bar`` (an EMA of ``f``, no gradients) sees every token; the predictor ``g`` reads
``f(C)`` plus mask tokens at the positions of ``T_k`` and regresses the target latents:

    L = mean_k || g(f(x_C), pos(T_k)) - f_bar(x)[T_k] ||^2,   f_bar <- m f_bar + (1 - m) f,

with ``m`` rising linearly from ``ema_start`` to ``ema_end`` over ``ema_steps`` updates. Without
regularisation tokens (``n_reg_tokens=0``) the paper reports collapsed training.
Downstream models read :meth:`TJEPA.representations`: the target encoder's output tokens
(regularisation tokens included) flattened per row, as the official ``linear_flatten`` input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from priorlab.errors import PriorlabError
from priorlab.hooks import Adapter, StepContext, unwrap_model
from priorlab.validation import check_number, check_tensor

WHO = "TJEPA"


def _sincos(positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position table (positions, dim), as the official predictor uses."""
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class FeatureTokenizer(nn.Module):
    """Numeric and categorical columns to one token each, after ``n_reg_tokens`` learned tokens.

    Input: float (N, num_numeric + len(cardinalities)), numeric columns first, categorical
    columns as integer codes. Output: (N, n_reg_tokens + num_features, dim).
    """

    def __init__(self, num_numeric: int, cardinalities, dim: int, n_reg_tokens: int = 1):
        super().__init__()
        self.num_numeric, self.cardinalities = num_numeric, tuple(int(c) for c in cardinalities)
        self.num_features = num_numeric + len(self.cardinalities)
        self.numeric_weight = nn.Parameter(torch.empty(num_numeric, dim))
        self.bias = nn.Parameter(torch.empty(self.num_features, dim))
        self.embeddings = nn.ModuleList(nn.Embedding(c, dim) for c in self.cardinalities)
        self.reg_tokens = nn.Parameter(torch.empty(n_reg_tokens, dim))
        for p in (self.numeric_weight, self.bias, self.reg_tokens, *(e.weight for e in self.embeddings)):
            if p.numel():  # no regularisation tokens (the ablation) leaves an empty table
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))  # the official (nn.Linear-like) init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        numeric = x[:, : self.num_numeric, None] * self.numeric_weight
        codes = x[:, self.num_numeric:].long()
        categorical = [emb(codes[:, k]) for k, emb in enumerate(self.embeddings)]
        tokens = torch.cat([numeric, *(c[:, None] for c in categorical)], dim=1) + self.bias
        reg = self.reg_tokens.expand(len(x), -1, -1)
        return torch.cat([reg, tokens], dim=1)


class TokenEncoder(nn.Module):
    """Transformer over tokens, then LayerNorm -> Linear -> LayerNorm (the official TabularEncoder)."""

    def __init__(self, dim: int, depth: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(tokens))


class TJEPA(nn.Module):
    """Context encoder, EMA target encoder and predictor; ``forward(x)`` returns the JEPA loss.

    Args:
        num_numeric, cardinalities: the column layout of ``x`` (numeric first, then codes).
        dim, depth, heads, ffn, dropout: the encoders (official: 64, 16, 2, 64, ~0.002).
        pred_dim, pred_depth, pred_heads: the predictor (official: 16, 16, 4).
        n_reg_tokens: regularisation tokens (official 1; 0 removes them, the collapse ablation).
        context_share, target_share: (min, max) shares of features per context / target subset.
        num_targets: target subsets per row (official 4).
        ema_start, ema_end, ema_steps: the target encoder's momentum schedule.
        seed: seeds the subset draws; draw ``i`` uses ``(seed, i)``, so training resumes exactly.
    """

    def __init__(self, num_numeric: int, cardinalities=(), *, dim: int = 64, depth: int = 2,
                 heads: int = 2, ffn: int = 64, dropout: float = 0.0, pred_dim: int = 16,
                 pred_depth: int = 2, pred_heads: int = 4, n_reg_tokens: int = 1,
                 context_share=(0.136, 0.368), target_share=(0.156, 0.622), num_targets: int = 4,
                 ema_start: float = 0.996, ema_end: float = 1.0, ema_steps: int = 1000, seed: int = 0):
        super().__init__()
        num_numeric = check_number(num_numeric, "num_numeric", who=WHO, low=0, integer=True)
        cardinalities = tuple(check_number(c, "each cardinality", who=WHO, low=1, integer=True)
                              for c in cardinalities)
        for name, value, low in (("dim", dim, 1), ("depth", depth, 1), ("heads", heads, 1),
                                 ("ffn", ffn, 1), ("pred_dim", pred_dim, 1), ("pred_depth", pred_depth, 1),
                                 ("pred_heads", pred_heads, 1), ("n_reg_tokens", n_reg_tokens, 0),
                                 ("num_targets", num_targets, 1), ("ema_steps", ema_steps, 1)):
            check_number(value, name, who=WHO, low=low, integer=True)
        if dim % heads or pred_dim % pred_heads or dim % 2 or pred_dim % 2:
            raise PriorlabError(f"{WHO}: dim ({dim}) must be even and divisible by heads ({heads}), "
                                f"pred_dim ({pred_dim}) even and divisible by pred_heads ({pred_heads})")
        check_number(dropout, "dropout", who=WHO, low=0, high=1, high_open=True)
        check_number(ema_start, "ema_start", who=WHO, low=0, high=1)
        check_number(ema_end, "ema_end", who=WHO, low=ema_start, high=1,
                     hint="the momentum rises from ema_start to ema_end")
        self.num_features = num_numeric + len(cardinalities)
        self.n_reg_tokens, self.num_targets, self.seed = n_reg_tokens, num_targets, int(seed)
        self.ema_start, self.ema_end, self.ema_steps = float(ema_start), float(ema_end), ema_steps
        self.context_range = self._count_range(context_share, "context_share")
        self.target_range = self._count_range(target_share, "target_share")
        if self.context_range[0] + self.target_range[0] > self.num_features:
            raise PriorlabError(f"{WHO}: the smallest context ({self.context_range[0]}) and target "
                                f"({self.target_range[0]}) subsets exceed the {self.num_features} "
                                "features; lower context_share or target_share")
        self.tokenizer = FeatureTokenizer(num_numeric, cardinalities, dim, n_reg_tokens)
        self.context_encoder = TokenEncoder(dim, depth, heads, ffn, dropout)
        self.target_tokenizer = FeatureTokenizer(num_numeric, cardinalities, dim, n_reg_tokens)
        self.target_encoder = TokenEncoder(dim, depth, heads, ffn, dropout)
        self.target_tokenizer.load_state_dict(self.tokenizer.state_dict())
        self.target_encoder.load_state_dict(self.context_encoder.state_dict())
        for p in self._target_parameters():
            p.requires_grad_(False)
        self.pred_in = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.randn(pred_dim) * 0.02)
        positions = _sincos(n_reg_tokens + self.num_features, pred_dim)
        self.register_buffer("pred_pos", positions, persistent=False)
        self.predictor = TokenEncoder(pred_dim, pred_depth, pred_heads, 4 * pred_dim, dropout)
        self.pred_out = nn.Sequential(nn.LayerNorm(pred_dim), nn.Linear(pred_dim, dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _count_range(self, share, name: str) -> tuple[int, int]:
        if not (isinstance(share, (tuple, list)) and len(share) == 2):
            raise PriorlabError(f"{WHO}: {name} must be a (min, max) pair of shares, got {share!r}")
        low = check_number(share[0], f"{name}[0]", who=WHO, low=0, high=1, low_open=True)
        high = check_number(share[1], f"{name}[1]", who=WHO, low=low, high=1)
        counts = (max(1, round(low * self.num_features)), max(1, round(high * self.num_features)))
        if counts[1] >= self.num_features:
            raise PriorlabError(f"{WHO}: {name} max {high} leaves no feature outside the subset of "
                                f"{self.num_features}; lower it")
        return counts

    def _target_parameters(self):
        return [*self.target_tokenizer.parameters(), *self.target_encoder.parameters()]

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", who=WHO, ndim=2, shape=(None, self.num_features), dtype="float",
                     finite=True, non_empty=True,
                     hint="numeric columns first, then categorical integer codes, as floats")
        codes = x[:, self.tokenizer.num_numeric:]
        high = torch.tensor(self.tokenizer.cardinalities, dtype=x.dtype)
        if codes.numel() and ((codes != codes.round()) | (codes < 0) | (codes >= high)).any():
            raise PriorlabError(f"{WHO}: categorical columns must hold integer codes in [0, cardinality) "
                                f"with cardinalities {self.tokenizer.cardinalities}")
        return x

    def sample_subsets(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature indices: context (batch, n_ctx) and targets (num_targets, batch, n_tgt),
        targets disjoint from the context (official ``MaskCollator``, ``allow_overlap=False``)."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
        while True:  # one pair of sizes per batch, as in the official collator
            n_ctx = int(torch.randint(self.context_range[0], self.context_range[1] + 1, (), generator=gen))
            n_tgt = int(torch.randint(self.target_range[0], self.target_range[1] + 1, (), generator=gen))
            if n_ctx + n_tgt <= self.num_features:
                break
        order = torch.rand(batch, self.num_features, generator=gen).argsort(1)
        context, rest = order[:, :n_ctx], order[:, n_ctx:]
        picks = torch.rand(self.num_targets, batch, rest.shape[1], generator=gen).argsort(2)[..., :n_tgt]
        targets = torch.gather(rest.expand(self.num_targets, -1, -1), 2, picks)
        return context, targets

    @staticmethod
    def _gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The T-JEPA loss (a scalar) on the rows ``x``; call :meth:`update_target` after each step."""
        x = self._check_input(x)
        batch, reg = len(x), self.n_reg_tokens
        context, targets = self.sample_subsets(batch)
        context, targets = context.to(x.device) + reg, targets.to(x.device) + reg  # token positions
        with torch.no_grad():
            target_latents = self.target_encoder(self.target_tokenizer(x))
        tokens = self.tokenizer(x)
        keep = torch.cat([torch.arange(reg, device=x.device).expand(batch, -1), context], dim=1)
        z = self.context_encoder(self._gather(tokens, keep))  # regularisation tokens + context
        z = self.pred_in(z) + self.pred_pos[keep]
        loss = 0.0
        for target in targets:  # one predictor pass per target subset
            queries = self.mask_token + self.pred_pos[target]
            out = self.predictor(torch.cat([z, queries], dim=1))[:, keep.shape[1]:]
            loss = loss + nn.functional.mse_loss(self.pred_out(out), self._gather(target_latents, target))
        return loss / self.num_targets

    def momentum(self) -> float:
        frac = min(int(self.step) / self.ema_steps, 1.0)
        return self.ema_start + (self.ema_end - self.ema_start) * frac

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA step of the target encoder towards the context encoder; advances the step count."""
        m = self.momentum()
        online = [*self.tokenizer.parameters(), *self.context_encoder.parameters()]
        for target, source in zip(self._target_parameters(), online):
            target.mul_(m).add_(source.detach(), alpha=1 - m)
        self.step += 1

    @torch.no_grad()
    def representations(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """Target-encoder tokens flattened per row: (N, (n_reg_tokens + num_features) * dim)."""
        x = self._check_input(x)
        was_training = self.training
        self.eval()
        out = torch.cat([self.target_encoder(self.target_tokenizer(x[i:i + batch_size])).flatten(1)
                         for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out


class TJEPATargetEMA(Adapter):
    """Training-loop adapter: after each optimiser step, move the target encoder (EMA)."""

    # T-JEPA draws its context/target feature masks per step for the batch it sees, so ranks holding
    # shards of a batch train differently from one process holding all of it (the DDP contract)
    ddp_safe = False

    def after_step(self, ctx: StepContext) -> None:
        model = unwrap_model(ctx.model)
        if not isinstance(model, TJEPA):
            raise PriorlabError(f"TJEPATargetEMA needs a TJEPA model, got {type(model).__name__}")
        model.update_target()


def jepa_loss(loss: torch.Tensor, _targets=None) -> torch.Tensor:
    """``loss_fn`` for :func:`priorlab.train.fit`: the model's output already is the loss."""
    return loss
