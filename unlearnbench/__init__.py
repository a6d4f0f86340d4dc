"""unlearnbench: benchmark and evaluation harness for unlearning in diffusion models."""
__version__ = "0.1.0"
__all__ = ["load_results", "load_robustness", "__version__"]


def __getattr__(name: str):
    """Lazy re-exports: ``unlearnbench.load_results`` without importing pandas (or anything heavy) on import."""
    if name == "load_results":
        from unlearnbench.results import load_results

        return load_results
    if name == "load_robustness":
        from unlearnbench.leaderboard.robustness import load_robustness

        return load_robustness
    if name == "results":
        import importlib

        return importlib.import_module("unlearnbench.results")
    raise AttributeError(f"module 'unlearnbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy re-exports too, so ``dir(unlearnbench)`` and tab completion show ``load_results``."""
    return sorted(set(globals()) | set(__all__))
