"""Registered generator and critic objectives."""

from oneforcing.losses import flow_matching  # noqa: F401
