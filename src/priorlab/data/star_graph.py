"""Path-star graphs: the planning task of Bachmann & Nagarajan, "The pitfalls of next-token
prediction" (arXiv 2403.06963), as used by the ILM paper (arXiv 2505.05755, star-graph tasks).

A star has a centre (the source) and ``degree`` arms, each a chain of ``path_length - 1`` further
nodes; the goal is the end of one arm. Node labels are distinct draws from ``num_nodes`` labels,
and the edge list is shuffled. The model sees the edges and the (source, goal) query and must
output the path source -> goal (``path_length`` nodes). Left to right, only the first step after
the source is hard (which arm?), and it is easy backwards from the goal: teacher-forced
next-token training learns to copy the rest and guesses that step (about 1/degree exact match).

Token layout (one shared vocabulary for every model): node labels ``0 .. num_nodes - 1``, then
PAD, CLS, QUERY, ANSWER, MASK. A prompt is
``[CLS] u1 v1 u2 v2 ... [QUERY] source goal [ANSWER]`` (one directed edge u -> v per pair, away
from the centre); the target is the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from priorlab.errors import PriorlabError
from priorlab.validation import check_number

SPECIAL_TOKENS = ("PAD", "CLS", "QUERY", "ANSWER", "MASK")


@dataclass(frozen=True)
class StarVocab:
    """Token ids of a star-graph vocabulary with ``num_nodes`` node labels."""

    num_nodes: int

    @property
    def pad(self) -> int:
        return self.num_nodes

    @property
    def cls(self) -> int:
        return self.num_nodes + 1

    @property
    def query(self) -> int:
        return self.num_nodes + 2

    @property
    def answer(self) -> int:
        return self.num_nodes + 3

    @property
    def mask(self) -> int:
        return self.num_nodes + 4

    @property
    def size(self) -> int:
        return self.num_nodes + len(SPECIAL_TOKENS)

    def node_tokens(self) -> torch.Tensor:
        """Boolean (size,) mask of the tokens a path may contain (the node labels)."""
        allowed = torch.zeros(self.size, dtype=torch.bool)
        allowed[: self.num_nodes] = True
        return allowed


@dataclass(frozen=True)
class StarGraphs:
    """A batch of star-graph problems: ``prompt`` (n, 1 + 2 E + 4) and ``path`` (n, path_length),
    E = degree (path_length - 1) edges."""

    prompt: torch.Tensor
    path: torch.Tensor
    vocab: StarVocab
    degree: int
    path_length: int

    def __len__(self) -> int:
        return self.path.shape[0]

    def subset(self, index: torch.Tensor) -> StarGraphs:
        return StarGraphs(self.prompt[index], self.path[index], self.vocab, self.degree, self.path_length)


def star_graphs(n: int, *, degree: int = 3, path_length: int = 5, num_nodes: int = 20,
                seed: int = 0) -> StarGraphs:
    """``n`` random path-star problems (see the module docstring), reproducible from ``seed``.

    Needs ``num_nodes >= degree (path_length - 1) + 1`` distinct labels. The official ILM
    configuration "star_small" is degree 3, path length 5, 20 nodes.
    """
    n = check_number(n, "n", who="star_graphs", low=1, integer=True)
    degree = check_number(degree, "degree", who="star_graphs", low=2, integer=True,
                          hint="a star needs at least two arms for the source to be ambiguous")
    path_length = check_number(path_length, "path_length", who="star_graphs", low=2, integer=True)
    num_nodes = check_number(num_nodes, "num_nodes", who="star_graphs", low=2, integer=True)
    needed = degree * (path_length - 1) + 1
    if num_nodes < needed:
        raise PriorlabError(f"star_graphs: num_nodes={num_nodes} is too few for distinct labels; "
                            f"degree {degree} x (path_length {path_length} - 1) + 1 = {needed} needed")
    vocab = StarVocab(num_nodes)
    generator = torch.Generator().manual_seed(int(seed))
    labels = torch.rand(n, num_nodes, generator=generator).argsort(dim=1)[:, :needed]
    centre = labels[:, :1]
    arms = labels[:, 1:].reshape(n, degree, path_length - 1)  # arm 0 leads to the goal
    chains = torch.cat([centre.unsqueeze(1).expand(n, degree, 1), arms], dim=2)
    edges = torch.stack([chains[:, :, :-1], chains[:, :, 1:]], dim=-1).reshape(n, -1, 2)
    order = torch.rand(n, edges.shape[1], generator=generator).argsort(dim=1)
    edges = torch.gather(edges, 1, order.unsqueeze(-1).expand_as(edges))
    path = chains[:, 0]
    goal = path[:, -1:]

    def column(token: int) -> torch.Tensor:
        return torch.full((n, 1), token, dtype=torch.long)

    prompt = torch.cat([column(vocab.cls), edges.reshape(n, -1), column(vocab.query), centre, goal,
                        column(vocab.answer)], dim=1)
    return StarGraphs(prompt, path.clone(), vocab, degree, path_length)


def is_valid_path(graphs: StarGraphs, paths: torch.Tensor) -> torch.Tensor:
    """(n,) bool: each generated path equals the true path exactly (length and every node).

    ``paths`` is (n, m) with PAD after the generated tokens; m may differ from path_length.
    """
    n, length = graphs.path.shape
    if paths.ndim != 2 or paths.shape[0] != n:
        raise PriorlabError(f"is_valid_path: paths must be ({n}, m), got {tuple(paths.shape)}")
    width = max(length, paths.shape[1])
    padded = torch.full((n, width), graphs.vocab.pad, dtype=torch.long)
    padded[:, : paths.shape[1]] = paths
    truth = torch.full((n, width), graphs.vocab.pad, dtype=torch.long)
    truth[:, :length] = graphs.path
    return (padded == truth).all(dim=1)
