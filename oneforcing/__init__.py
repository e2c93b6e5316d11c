"""oneforcing: distil video diffusion models into one-step causal (streaming) generators."""

__version__ = "0.1.0"
