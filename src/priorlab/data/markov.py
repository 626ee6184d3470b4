"""A hidden Markov model source with exactly computable statistics.

``HMM(transition, emission)``: hidden states follow a Markov chain (``transition[i, j] =
P(z_{t+1}=j | z_t=i)``) started from its stationary distribution unless told otherwise, and
each state emits a token (``emission[i, v] = P(x_t=v | z_t=i)``). Besides sampling, everything
a language-model experiment needs to know about the source is exact:

- :meth:`HMM.filter`: the forward algorithm, beliefs ``P(z_t | x_1..t)``, next-token
  distributions and the sequence log-likelihood.
- :meth:`HMM.windows`: every window of ``k`` tokens with its stationary probability, the
  distribution of the next token and of the one after, and the posterior of the hidden state
  that emitted the window's last token; a model that sees ``k`` tokens is scored exactly on it.
- :meth:`HMM.entropy_rate_bounds` / :meth:`HMM.entropy_rate`: Cover & Thomas, Elements of
  Information Theory, Thm 4.5.1: ``H(X_{k+1} | X_1..k, Z_1) <= H <= H(X_{k+1} | X_1..k)``, both
  sides exact by enumerating windows, and they meet as ``k`` grows.

Entropies are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from priorlab.errors import PriorlabError


def _check_stochastic(name: str, matrix, rows: int | None = None) -> torch.Tensor:
    if not isinstance(matrix, torch.Tensor):
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
    if matrix.dim() != 2 or not matrix.is_floating_point() or (rows is not None and matrix.shape[0] != rows):
        want = f"({rows}, ·)" if rows is not None else "2-D"
        raise PriorlabError(f"{name} must be a {want} floating-point matrix, got shape "
                            f"{tuple(matrix.shape)} and dtype {matrix.dtype}")
    matrix = matrix.to(torch.float64)
    if not torch.isfinite(matrix).all() or (matrix < 0).any():
        raise PriorlabError(f"{name} must hold finite, non-negative probabilities")
    sums = matrix.sum(1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
        raise PriorlabError(f"each row of {name} must sum to 1 (row sums range "
                            f"{float(sums.min()):.4g}..{float(sums.max()):.4g}); normalise the rows")
    return matrix / sums[:, None]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last axis (0 log 0 = 0)."""
    return -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)


@dataclass(frozen=True)
class Windows:
    """Every window of ``k`` tokens, with exact statistics under the stationary source."""

    tokens: torch.Tensor  # (V^k, k) long; row i spells i in base V, first token most significant
    prob: torch.Tensor  # (V^k,) P(x_1..k = window)
    next_token: torch.Tensor  # (V^k, V) P(x_{k+1} | window)
    token_after_next: torch.Tensor  # (V^k, V) P(x_{k+2} | window)
    state: torch.Tensor  # (V^k, S) P(z_k | window): the state that emitted the last token

    def conditional_entropy(self) -> float:
        """H(X_{k+1} | window): the lowest expected loss of any model that sees these k tokens."""
        return float((self.prob * _entropy(self.next_token)).sum())


class HMM:
    """A discrete hidden Markov model; see the module docstring."""

    def __init__(self, transition, emission, initial=None):
        self.transition = _check_stochastic("transition", transition)
        num_states = self.transition.shape[0]
        if self.transition.shape[1] != num_states:
            raise PriorlabError(f"transition must be square (states x states), got shape "
                                f"{tuple(self.transition.shape)}")
        self.emission = _check_stochastic("emission", emission, rows=num_states)
        if initial is None:
            self.initial = self.stationary()
        else:
            self.initial = _check_stochastic("initial", torch.as_tensor(initial, dtype=torch.float64)
                                             .reshape(1, -1), rows=1)[0]
            if self.initial.numel() != num_states:
                raise PriorlabError(f"initial must have one probability per state ({num_states}), "
                                    f"got {self.initial.numel()}")

    @property
    def num_states(self) -> int:
        return self.transition.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.emission.shape[1]

    @classmethod
    def random(cls, num_states: int, vocab_size: int, *, transition_concentration: float = 1.0,
               emission_concentration: float = 1.0, seed: int = 0) -> HMM:
        """Rows drawn from symmetric Dirichlet distributions (smaller concentration = peakier)."""
        for name, value in (("num_states", num_states), ("vocab_size", vocab_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise PriorlabError(f"{name} must be an integer >= 2, got {value!r}")
        for name, value in (("transition_concentration", transition_concentration),
                            ("emission_concentration", emission_concentration)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise PriorlabError(f"{name} must be a positive number, got {value!r}")
        rng = np.random.default_rng(seed)  # numpy: torch's Dirichlet sampler takes no generator

        def dirichlet(rows, cols, alpha):
            return torch.as_tensor(rng.dirichlet([alpha] * cols, size=rows), dtype=torch.float64)

        return cls(dirichlet(num_states, num_states, transition_concentration),
                   dirichlet(num_states, vocab_size, emission_concentration))

    def stationary(self) -> torch.Tensor:
        """The stationary distribution of the hidden chain (left eigenvector for eigenvalue 1)."""
        values, vectors = torch.linalg.eig(self.transition.T)
        index = int(torch.argmin((values - 1).abs()))
        if abs(complex(values[index]) - 1) > 1e-8:
            raise PriorlabError("the transition matrix has no eigenvalue 1; it is not stochastic")
        pi = vectors[:, index].real
        pi = pi / pi.sum()
        if (pi < -1e-10).any() or ((values - 1).abs() < 1e-8).sum() > 1:
            raise PriorlabError("the hidden chain has no unique stationary distribution (it is "
                                "reducible); pass initial= explicitly or make it irreducible")
        return pi.clamp_min(0) / pi.clamp_min(0).sum()

    # ---- sampling --------------------------------------------------------------------------

    def sample(self, num_sequences: int, length: int, *,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, states)``, both long tensors of shape ``(num_sequences, length)``."""
        for name, value in (("num_sequences", num_sequences), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PriorlabError(f"{name} must be an integer >= 1, got {value!r}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        states = torch.empty(num_sequences, length, dtype=torch.long)
        tokens = torch.empty(num_sequences, length, dtype=torch.long)
        # inverse-CDF sampling keeps the draws vectorised over sequences and reproducible
        trans_cdf, emit_cdf = self.transition.cumsum(1), self.emission.cumsum(1)
        z = torch.searchsorted(self.initial.cumsum(0).expand(num_sequences, -1).contiguous(),
                               torch.rand(num_sequences, 1, generator=gen, dtype=torch.float64))
        z = z.squeeze(1).clamp_max(self.num_states - 1)
        for t in range(length):
            if t > 0:
                u = torch.rand(num_sequences, 1, generator=gen, dtype=torch.float64)
                z = torch.searchsorted(trans_cdf[z].contiguous(), u).squeeze(1).clamp_max(
                    self.num_states - 1)
            u = torch.rand(num_sequences, 1, generator=gen, dtype=torch.float64)
            x = torch.searchsorted(emit_cdf[z].contiguous(), u).squeeze(1).clamp_max(
                self.vocab_size - 1)
            states[:, t], tokens[:, t] = z, x
        return tokens, states

    # ---- exact inference -------------------------------------------------------------------

    def _check_tokens(self, tokens) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dim() not in (1, 2):
            got = (f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}"
                   if isinstance(tokens, torch.Tensor) else type(tokens).__name__)
            raise PriorlabError(f"tokens must be an integer tensor of shape (length,) or "
                                f"(sequences, length), got {got}")
        if tokens.numel() == 0:
            raise PriorlabError("tokens is empty")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise PriorlabError(f"tokens must lie in [0, {self.vocab_size - 1}], got values in "
                                f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens.long().reshape(-1, tokens.shape[-1])

    def filter(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The forward algorithm on ``tokens`` (N, T) (or (T,)), all from the initial distribution.

        Returns ``belief`` (N, T, S) = P(z_t | x_1..t), ``next_token`` (N, T, V) =
        P(x_{t+1} | x_1..t), and ``log_likelihood`` (N,) = log P(x_1..T).
        """
        x = self._check_tokens(tokens)
        n, length = x.shape
        prior = self.initial.expand(n, -1)
        beliefs, nexts = [], []
        log_likelihood = torch.zeros(n, dtype=torch.float64)
        for t in range(length):
            joint = prior * self.emission[:, x[:, t]].T  # P(z_t, x_t | past)
            evidence = joint.sum(1)
            log_likelihood += evidence.log()
            belief = joint / evidence[:, None]
            prior = belief @ self.transition
            beliefs.append(belief)
            nexts.append(prior @ self.emission)
        return {"belief": torch.stack(beliefs, 1), "next_token": torch.stack(nexts, 1),
                "log_likelihood": log_likelihood}

    def _window_forward(self, k: int, initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised forward messages for all V^k windows: (P(window, z_k) rows, tokens)."""
        v = self.vocab_size
        alpha = initial[None, :] * self.emission.T  # (V, S): window of one token
        tokens = torch.arange(v).reshape(v, 1)
        for _ in range(k - 1):
            prior = alpha @ self.transition  # (W, S)
            alpha = (prior[:, None, :] * self.emission.T[None, :, :]).reshape(-1, self.num_states)
            tokens = torch.cat([tokens.repeat_interleave(v, 0), torch.arange(v).repeat(len(tokens))
                                .reshape(-1, 1)], 1)
        return alpha, tokens

    def _check_window(self, k, max_windows) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise PriorlabError(f"the window length k must be an integer >= 1, got {k!r}")
        if self.vocab_size ** k * self.num_states > max_windows:
            raise PriorlabError(f"{self.vocab_size}^{k} windows x {self.num_states} states exceed "
                                f"max_windows={max_windows}; use a shorter window or raise the limit")

    def windows(self, k: int, *, max_windows: int = 2_000_000) -> Windows:
        """All V^k windows of k consecutive tokens of the stationary process (see :class:`Windows`)."""
        self._check_window(k, max_windows)
        alpha, tokens = self._window_forward(k, self.initial)
        prob = alpha.sum(1)
        state = alpha / prob.clamp_min(1e-300)[:, None]
        after_one = state @ self.transition
        return Windows(tokens=tokens, prob=prob, next_token=after_one @ self.emission,
                       token_after_next=after_one @ self.transition @ self.emission, state=state)

    def entropy_rate_bounds(self, k: int, *, max_windows: int = 2_000_000) -> tuple[float, float]:
        """``(H(X_{k+1} | X_1..k, Z_1), H(X_{k+1} | X_1..k))``: exact bounds on the entropy rate.

        Needs a stationary start (the default ``initial``).
        """
        self._check_window(k, max_windows)
        if not torch.allclose(self.initial, self.stationary(), atol=1e-9):
            raise PriorlabError("entropy-rate bounds assume the stationary start; build the HMM "
                                "without initial=")
        upper = self.windows(k, max_windows=max_windows).conditional_entropy()
        lower = 0.0
        for s in range(self.num_states):
            start = torch.zeros(self.num_states, dtype=torch.float64)
            start[s] = 1.0
            alpha, _ = self._window_forward(k, start)  # P(window, z_k | z_1 = s)
            prob = alpha.sum(1)
            keep = prob > 0
            nxt = (alpha[keep] / prob[keep, None]) @ self.transition @ self.emission
            lower += float(self.initial[s] * (prob[keep] * _entropy(nxt)).sum())
        return lower, upper

    def entropy_rate(self, *, tol: float = 1e-4, max_windows: int = 2_000_000) -> float:
        """The entropy rate in nats, from the bounds at growing k until they are ``tol`` apart."""
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise PriorlabError(f"tol must be a positive number, got {tol!r}")
        k, lower, upper = 1, 0.0, math.inf
        while self.vocab_size ** k * self.num_states <= max_windows:
            lower, upper = self.entropy_rate_bounds(k, max_windows=max_windows)
            if upper - lower <= tol:
                return (lower + upper) / 2
            k += 1
        raise PriorlabError(f"the entropy-rate bounds are still {upper - lower:.3g} apart at window "
                            f"{k - 1} (the most max_windows={max_windows} allows); raise tol or "
                            "max_windows, or use a faster-mixing HMM")


def noisy_cycle(num_states: int = 6, vocab_size: int = 4, *, stay: float = 0.3,
                advance: float = 0.6, skip: float = 0.1, peak: float = 0.8) -> HMM:
    """Hidden states on a cycle: stay, advance one or skip one; state ``s`` mostly emits token
    ``s mod vocab_size`` (probability ``peak`` on it, the rest spread evenly).

    With more states than tokens, states sharing a token are told apart only by context, so
    the hidden state is partly (not fully) recoverable from a window of tokens.
    """
    for name, value in (("num_states", num_states), ("vocab_size", vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise PriorlabError(f"{name} must be an integer >= 2, got {value!r}")
    moves = (stay, advance, skip)
    if any(not isinstance(m, (int, float)) or m < 0 for m in moves) or abs(sum(moves) - 1) > 1e-9:
        raise PriorlabError(f"stay, advance and skip must be probabilities summing to 1, got {moves}")
    if not (isinstance(peak, (int, float)) and 0 <= peak <= 1):
        raise PriorlabError(f"peak must be a probability in [0, 1], got {peak!r}")
    transition = torch.zeros(num_states, num_states, dtype=torch.float64)
    emission = torch.full((num_states, vocab_size), (1 - peak) / vocab_size, dtype=torch.float64)
    for s in range(num_states):
        for offset, prob in enumerate(moves):
            transition[s, (s + offset) % num_states] += prob
        emission[s, s % vocab_size] += peak
    return HMM(transition, emission)

