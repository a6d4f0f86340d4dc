"""unlearnbench: benchmark and evaluation harness for unlearning in diffusion models."""
__version__ = "0.1.0"
