"""Logging set-up; only the CLI calls :func:`setup_logging`."""
import logging
import os
import warnings


def setup_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("unlearnbench").setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    for noisy in ("ray", "diffusers", "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
