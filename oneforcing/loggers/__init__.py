"""Metric sinks (registered in `loggers`): console with a progress bar, JSON lines, wandb."""

from oneforcing.loggers.sinks import ConsoleLogger, JsonlLogger, MetricLoggers, WandbLogger, build_loggers

__all__ = ["ConsoleLogger", "JsonlLogger", "MetricLoggers", "WandbLogger", "build_loggers"]
