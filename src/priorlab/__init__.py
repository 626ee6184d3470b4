"""priorlab: priors and regularisation in learning, as components with paper cards and reproductions."""

__version__ = "0.1.0"

_FACTORY_NAMES = ("create_optimizer", "create_adapter", "list_optimizers", "list_optimizer_wrappers",
                  "list_adapters")
__all__ = ["__version__", *_FACTORY_NAMES]


def __getattr__(name: str):
    # Imported on first use, so that `import priorlab` (and the CLI's start) stays light.
    if name in _FACTORY_NAMES:
        from priorlab import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'priorlab' has no attribute {name!r}")
