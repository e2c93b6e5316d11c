"""The registries, one per kind of component, and `REGISTRIES` (kind -> registry). Their own
module, below `build` (which resolves `kind:name` through REGISTRIES) and the package __init__."""

from oneforcing.registry.registry import Registry

MODELS = Registry("models", "networks: CausalWan, toy models, critic heads")
CRITICS = Registry("critics", "fake-score critics, with or without a discriminator head")
LOSSES = Registry("losses", "generator and critic objectives")
SAMPLERS = Registry("samplers", "rollouts: causal inference, self-forcing training, teacher ODE")
SCHEDULERS = Registry("schedulers", "noise schedules and step lists")
TIMESTEP_SAMPLERS = Registry("timestep_samplers", "training-time timestep distributions")
DATASETS = Registry("datasets", "latent shards, prompt lists, ODE pairs, the toy world")
VAES = Registry("vaes", "latent codecs: Wan VAE, the toy codec")
TEXT_ENCODERS = Registry("text_encoders", "prompt encoders: UMT5")
ATTENTION = Registry("attention", "attention backends: flash, sdpa, flex")
JOBS = Registry("jobs", "what a recipe runs: train, generate, toy-data, eval ...")
METRICS = Registry("metrics", "evaluation metrics (ToyBench)")
LOGGERS = Registry("loggers", "metric sinks: console, jsonl, wandb")
REAL_SOURCES = Registry("real_sources", "where a discriminator's 'real' samples come from")

REGISTRIES: dict[str, Registry] = {
    r.kind: r
    for r in (
        MODELS, CRITICS, LOSSES, SAMPLERS, SCHEDULERS, TIMESTEP_SAMPLERS, DATASETS, VAES,
        TEXT_ENCODERS, ATTENTION, JOBS, METRICS, LOGGERS, REAL_SOURCES,
    )
}
