"""One registry per kind of component, `build` for configs, and plugin discovery.

    from oneforcing.registry import LOSSES

    @LOSSES.register("dmd")
    class DMDLoss: ...

    loss = build({"type": "dmd", "guidance": 5.0}, LOSSES)
"""

from oneforcing.registry.build import build, build_from_any, check_kwargs, declared, validate
from oneforcing.registry.contracts import CONTRACTS, Contract
from oneforcing.registry.kinds import (
    ATTENTION, CRITICS, DATASETS, JOBS, LOGGERS, LOSSES, METRICS, MODELS, REAL_SOURCES, REGISTRIES, SAMPLERS,
    SCHEDULERS, TEXT_ENCODERS, TIMESTEP_SAMPLERS, VAES,
)
from oneforcing.registry.plugins import (
    ENTRY_POINT_GROUP,
    import_modules,
    load_builtins,
    load_plugins,
    plugin_failures,
)
from oneforcing.registry.registry import Entry, Registry

__all__ = [
    "CONTRACTS", "Contract", "Entry", "Registry", "REGISTRIES", "build", "build_from_any", "check_kwargs", "declared",
    "validate",
    "ENTRY_POINT_GROUP", "import_modules", "load_builtins", "load_plugins", "plugin_failures",
    *[k.upper() for k in REGISTRIES],
]
