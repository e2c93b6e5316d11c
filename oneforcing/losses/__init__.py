"""Registered generator and critic objectives (and the GAN losses' real sources)."""

from oneforcing.losses import flow_matching  # noqa: F401
from oneforcing.losses import (  # noqa: F401
    consistency,
    dmd,
    flow_denoise,
    gan,
    ode_regression,
    real_sources,
    teacher_forcing,
)
