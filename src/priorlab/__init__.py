"""priorlab: priors and regularisation in learning, as components with paper cards and reproductions."""

__version__ = "0.1.0"
