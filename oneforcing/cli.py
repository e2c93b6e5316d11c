"""The `oneforcing` console script: thin sugar over recipes and jobs.

    oneforcing list [KIND]                 what is registered, and which package it came from
    oneforcing show RECIPE [k=v ...]       the resolved recipe (bases merged, overrides applied); a
                                           training recipe ends with its effective batch
    oneforcing show JOB [RECIPE] [k=v ...] the same for a job run directly (oneforcing JOB ...)
    oneforcing run RECIPE [k=v ...]        run a recipe on this process (same as recipes/run.py)
    oneforcing JOB [RECIPE] [k=v ...]      run a registered job directly, e.g.
                                           oneforcing toy-data out_dir=data/toy num_train=2000
    oneforcing study systems=[DIR,DIR] prompts=FILE    a pairwise preference study on http://127.0.0.1:8765
    oneforcing study-report db=FILE [out=DIR]          its Table 2 as markdown and CSV
    oneforcing serve CHECKPOINT [k=v ...]   a live page on http://127.0.0.1:8766: frames as they are
                                           generated, prompts switched mid-stream (or serve RECIPE)
"""

from __future__ import annotations

import sys

from oneforcing.errors import UserError, did_you_mean, report

USAGE = __doc__.split("\n", 2)[2]


def strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` / `--local_rank N` that the deepspeed launcher appends."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            continue
        if arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            skip = True
            continue
        out.append(arg)
    return out


def split_recipe_args(args: list[str]) -> tuple[str | None, list[str]]:
    """[RECIPE] [k=v ...] -> (recipe or None, overrides)."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def serve_args(args: list[str]) -> list[str]:
    """`serve CHECKPOINT ...` is `serve checkpoint=CHECKPOINT ...`: anything but a .yaml/.yml file
    names a checkpoint (a missing one is then reported as a missing checkpoint)."""
    from pathlib import Path

    if args and "=" not in args[0] and Path(args[0]).suffix not in (".yaml", ".yml"):
        return [f"checkpoint={args[0]}", *args[1:]]
    return args


def cmd_list(args: list[str]) -> int:
    from oneforcing.registry import REGISTRIES, load_plugins, plugin_failures

    load_plugins()
    kinds = list(REGISTRIES)
    if args:
        kind = args[0].replace("-", "_")
        if kind not in REGISTRIES:
            hint = did_you_mean(kind, kinds)
            print(f"error: unknown kind '{args[0]}'.{hint} Kinds: {', '.join(kinds)}", file=sys.stderr)
            return 2
        kinds = [kind]
    for kind in kinds:
        reg = REGISTRIES[kind]
        print(f"{kind}:" + ("" if reg.names() else " (none)"))
        for entry in reg.entries():
            doc = (entry.obj.__doc__ or "").strip().splitlines()
            summary = doc[0] if doc else ""
            print(f"  {entry.name:<28} [{entry.source}] {summary}")
    for name, msg in plugin_failures.items():
        print(f"plugin '{name}' failed to load: {msg}", file=sys.stderr)
    return 0


def _job_name(arg: str) -> str | None:
    """The registered job `arg` names (toy-data -> toy_data), unless it is a recipe file."""
    from pathlib import Path

    from oneforcing.registry import JOBS, load_plugins

    load_plugins()
    name = arg.replace("-", "_")
    return name if name in JOBS and not Path(arg).exists() else None


def effective_batch(recipe: dict, world_size: int) -> str | None:
    """A training recipe's batch per optimizer update, as one YAML comment line: micro-batch x
    world size x gradient accumulation, for `world_size` ranks and for 8 (the real recipes' layout,
    whose headers state the official batch on 8 GPUs). None for any other job."""
    from oneforcing.trainer.config import DeepSpeedOptions

    if recipe.get("job") != "train":
        return None
    ds = recipe.get("deepspeed") or {}
    micro = ds.get("micro_batch_size", DeepSpeedOptions.micro_batch_size)
    accumulation = ds.get("gradient_accumulation", DeepSpeedOptions.gradient_accumulation)
    line = (f"# effective batch: micro-batch {micro} x world size {world_size} x gradient accumulation "
            f"{accumulation} = {micro * world_size * accumulation} per update")
    return line if world_size == 8 else f"{line} (on 8 ranks: {micro * 8 * accumulation})"


def cmd_show(args: list[str]) -> int:
    from oneforcing.config import dump_recipe, load_recipe
    from oneforcing.jobs.base import prepare
    from oneforcing.runtime import env_int

    if not args:
        print("error: usage: oneforcing show RECIPE|JOB [key=value ...]", file=sys.stderr)
        return 2
    recipe_path, overrides = args[0], args[1:]
    try:
        job = _job_name(recipe_path)
        if job is not None:  # `oneforcing show generate [RECIPE] k=v` resolves `oneforcing generate ...`
            job_recipe, overrides = split_recipe_args(serve_args(overrides) if job == "serve" else overrides)
            recipe, _, _ = prepare(job_recipe, overrides, job_name=job)
        else:
            recipe = load_recipe(recipe_path, overrides)
            prepare(recipe_path, overrides)  # also validates every component against the registries
    except UserError as err:
        return report(err)
    print(dump_recipe(recipe), end="")
    batch = effective_batch(recipe, env_int("WORLD_SIZE", 1))  # the launcher's world size, 1 alone
    if batch is not None:
        print(batch)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = strip_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "list":
        return cmd_list(rest)
    if command == "show":
        return cmd_show(rest)
    from oneforcing.runner import run

    if command == "run":
        if not rest:
            print("error: usage: oneforcing run RECIPE [key=value ...]", file=sys.stderr)
            return 2
        return run(rest[0], rest[1:])
    from oneforcing.registry import JOBS, load_plugins

    load_plugins()
    job = command.replace("-", "_")
    if job not in JOBS:
        names = ["list", "show", "run", *[n.replace("_", "-") for n in JOBS.names()]]
        hint = did_you_mean(command, names)
        print(f"error: unknown command '{command}'.{hint} Commands: {', '.join(names)}", file=sys.stderr)
        return 2
    recipe, overrides = split_recipe_args(serve_args(rest) if job == "serve" else rest)
    return run(recipe, overrides, job_name=job)


def entry() -> None:
    """The `oneforcing` console command: main(), then leave (a launched rank: distributed.exit_process)."""
    from oneforcing.distributed import exit_process

    exit_process(main())


if __name__ == "__main__":
    entry()
