"""Every command in README.md runs as written when pasted into bash from the checkout's root.

The README's ```bash blocks and its inline commands (a `code span` of two or more words that starts
with oneforcing, python, deepspeed, torchrun, make or pip; a span with an UPPERCASE placeholder word such as RECIPE
or DIR is a synopsis and is left out, as are ```text blocks) are run by bash itself, so its quoting,
`$VARIABLE` expansion, line continuations and `&&` are what is tested. bash runs with an empty PATH:
those six programs are shell functions that record their argv, and any other program fails the test.
Each recorded command is then checked in this process, in a scratch folder that mirrors the checkout
(symlinks) with toy stand-ins for what a user would have (prompts.txt, trained exports):

- cheap toy jobs RUN for real (`toy_data` shrunk to 8 examples; `generate` and `eval` with toy
  weights, as written; `vbench_export` at one sample of 5 frames per prompt);
- everything else is RESOLVED with `oneforcing show` (bases, overrides, every component validated)
  and must contain no unexpanded `$`. Recipes under recipes/toy/ are run a few steps each by
  tests/test_recipes_all.py; the real recipes need Wan weights or GPUs (the real-layout chain with
  random weights is benchmarks/real_chain.py);
- launchers' arguments go through torchrun's and deepspeed's own argument parsers;
- `make TARGET` must exist (`make -n`), and any recipe its commands run resolves;
- `python benchmarks/SCRIPT.py` must exist and compile (benchmarks take minutes; they are run by
  hand and their figures recorded in benchmarks/README.md);
- `pip install PATH[EXTRA]` must name a package folder and extras its setup declares; a plugin
  folder's install is stood in for by importing its entry-point modules from the folder (its recipes
  then resolve; tests/test_example_plugin.py pip-installs it for real).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from oneforcing.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROGRAMS = ("oneforcing", "python", "deepspeed", "torchrun", "make", "pip")
PLACEHOLDER = re.compile(r"(?<![$\w])[A-Z][A-Z0-9_]*(\.yaml)?(?![\w=])|…")
# Where the real Wan folders would be: only resolved, never read.
REAL_ENV = {"WAN_1_3B": "/models/Wan2.1-T2V-1.3B-Diffusers", "WAN_14B": "/models/Wan2.1-T2V-14B-Diffusers",
            "RANK": "0", "HEAD": "127.0.0.1"}
# Toy jobs cheap enough to run for real, with what shrinks them (appended overrides win).
RUN_TOY_JOBS = {"toy_data": ["num_examples=8", "examples_per_shard=4", "batch_size=4"], "generate": [], "eval": [],
                "vbench_export": ["samples_per_prompt=1", "num_frames=5"]}
TOY_CHECKPOINT = ROOT / "oneforcing" / "assets" / "toy_causal_ode_init"

PRELUDE = r"""
set -euo pipefail
_n=0
_rec() { _n=$((_n + 1)); printf '%s\0' "$@" > "$_REC/$(printf %04d "$_n")"; }
""" + "".join(f"{p}() {{ _rec {p} \"$@\"; }}\n" for p in PROGRAMS) + r"""
command_not_found_handle() { _rec '<unknown program>' "$@"; }
"""


def readme_snippets(text: str) -> list[tuple[str, str]]:
    """[(README.md:LINE, shell text)] in document order: bash blocks and inline commands."""
    out, in_block, lang, body, start = [], False, "", [], 0
    prose: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and not in_block:
            in_block, lang, body, start = True, fence.group(1), [], n
        elif fence and in_block:
            in_block = False
            if lang == "bash":
                out.append((start, "\n".join(body)))
        elif in_block:
            body.append(line)
        else:
            prose.append((n, line))
    joined = "\n".join(line for _, line in prose)
    line_of = [n for n, line in prose for _ in range(len(line) + 1)]
    for m in re.finditer(r"`([^`]+)`", joined):
        span = " ".join(m.group(1).split())
        words = span.split()  # a program named alone (`oneforcing`) is a mention, not a command
        if len(words) > 1 and words[0] in PROGRAMS and not PLACEHOLDER.search(span):
            out.append((line_of[m.start()], span))
    return [(f"README.md:{n}", s) for n, s in sorted(out, key=lambda item: item[0])]


def record(shell: str, cwd: Path) -> list[list[str]]:
    """Run `shell` in bash with the programs replaced by recorders; -> the argv of each call."""
    rec = cwd / ".argv"
    rec.mkdir(exist_ok=True)
    for old in rec.iterdir():
        old.unlink()
    empty = cwd / ".nobin"
    empty.mkdir(exist_ok=True)
    env = {"PATH": str(empty), "HOME": str(cwd), "_REC": str(rec), **REAL_ENV}
    proc = subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", PRELUDE + shell], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"bash failed: {proc.stderr.strip()}"
    return [f.read_text().split("\0")[:-1] for f in sorted(rec.iterdir())]


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def resolve(args: list[str], capsys) -> dict:
    """`oneforcing show RECIPE|JOB k=v ...` must succeed and expand every shell variable."""
    capsys.readouterr()
    code = main(["show", *args])
    out, err = capsys.readouterr()
    assert code == 0, f"`oneforcing show {shlex.join(args)}` failed: {err.strip()}"
    recipe = yaml.safe_load(out)
    left = [s for s in _strings(recipe) if "$" in s]
    assert not left, f"unexpanded variables in {left} (single quotes keep $NAME from the shell)"
    return recipe


def stand_in_for_plugin_install(folder: Path) -> None:
    """What `pip install plugins/NAME` gives this process: its `oneforcing.plugins` entry-point
    modules imported (so their components register), from the folder itself."""
    text = (folder / "pyproject.toml").read_text()
    section = re.search(r'\[project\.entry-points\."oneforcing\.plugins"\]\n(.*?)(\n\[|$)', text, re.S)
    assert section, f"{folder}: no [project.entry-points.\"oneforcing.plugins\"] table"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    for module in re.findall(r'=\s*"([\w.]+)', section.group(1)):
        importlib.import_module(module)


def check_oneforcing(args: list[str], capsys) -> str:
    command, rest = args[0], args[1:]
    if command in ("list", "show"):
        assert main(args) == 0, capsys.readouterr().err
        return "ran"
    if command == "run":
        plugin = re.match(r"plugins/([^/]+)/", rest[0]) if rest else None
        if plugin:  # the README says to pip install the plugin first
            stand_in_for_plugin_install(ROOT / "plugins" / plugin.group(1))
        resolve(rest, capsys)
        return "resolved"
    recipe = resolve(args, capsys)
    job = command.replace("-", "_")
    uses_real_weights = any(v in s for s in _strings(recipe) for v in REAL_ENV.values() if "/" in v)
    if job in RUN_TOY_JOBS and not uses_real_weights:
        capsys.readouterr()
        code = main([*args, *RUN_TOY_JOBS[job]])
        assert code == 0, f"`oneforcing {shlex.join(args)}` failed: {capsys.readouterr().err.strip()}"
        return "ran"
    return "resolved"


def check_launcher(prog: str, args: list[str], capsys) -> str:
    if prog == "torchrun":
        from torch.distributed.run import parse_args

        parsed = parse_args(args)
        module, script, rest = parsed.module, parsed.training_script, parsed.training_script_args
    else:
        from deepspeed.launcher.runner import parse_args

        parsed = parse_args(args)
        module, script, rest = getattr(parsed, "module", False), parsed.user_script, parsed.user_args
    if module:
        assert script == "oneforcing.cli", f"{prog} runs module {script}, expected oneforcing.cli"
        return check_oneforcing(rest, capsys)
    assert script == "recipes/run.py", f"{prog} runs {script}, expected recipes/run.py"
    return check_oneforcing(["run", *rest], capsys)


def check_make(targets: list[str], cwd: Path, capsys) -> str:
    for target in targets:
        proc = subprocess.run(["make", "-n", target], cwd=cwd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"make {target}: {proc.stderr.strip()}"
        for line in proc.stdout.splitlines():
            words = shlex.split(line)
            if "recipes/run.py" in words:
                check_oneforcing(["run", *words[words.index("recipes/run.py") + 1:]], capsys)
    return "resolved"


def check_pip(args: list[str], cwd: Path) -> str:
    assert args[:1] == ["install"], f"pip {shlex.join(args)}: only `pip install` is documented"
    for spec in (a for a in args[1:] if not a.startswith("-")):
        m = re.fullmatch(r"([^\[]+)(?:\[([\w,]+)\])?", spec)
        folder = cwd / m.group(1)
        setup = next((folder / f for f in ("setup.py", "pyproject.toml") if (folder / f).is_file()), None)
        assert setup is not None, f"pip install {spec}: {folder} is not a package folder"
        if folder.resolve().parent == (ROOT / "plugins"):
            stand_in_for_plugin_install(folder.resolve())
        for extra in (m.group(2) or "").split(","):
            if extra:
                assert re.search(rf"""["']?{extra}["']?\s*[:=]""", setup.read_text()), \
                    f"pip install {spec}: {setup.name} declares no extra '{extra}'"
    return "resolved"


def check(argv: list[str], cwd: Path, capsys) -> str:
    prog, args = argv[0], argv[1:]
    if prog == "oneforcing":
        return check_oneforcing(args, capsys)
    if prog == "python":
        if args[:1] == ["-m"]:
            if args[1] == "oneforcing.cli":
                return check_oneforcing(args[2:], capsys)
            assert importlib.util.find_spec(args[1]) is not None, f"python -m {args[1]}: no such module"
            return "resolved"
        if args[:1] == ["recipes/run.py"]:
            return check_oneforcing(["run", *args[1:]], capsys)
        script = cwd / args[0]
        assert args[0].startswith("benchmarks/") and script.is_file(), \
            f"python {shlex.join(args)}: expected recipes/run.py or a script in benchmarks/"
        compile(script.read_text(), str(script), "exec")  # benchmarks take minutes: run by hand
        return "resolved"
    if prog in ("torchrun", "deepspeed"):
        return check_launcher(prog, args, capsys)
    if prog == "make":
        return check_make(args, cwd, capsys)
    if prog == "pip":
        return check_pip(args, cwd)
    raise AssertionError(f"README runs a program this test does not know: {shlex.join(argv)}")


@pytest.fixture(scope="module", autouse=True)
def _forget_stand_in_plugins():
    """Leave the registries, sys.path and sys.modules as this module found them."""
    from oneforcing.registry import REGISTRIES, load_plugins

    load_plugins()
    before = {kind: set(reg.names()) for kind, reg in REGISTRIES.items()}
    path, modules = list(sys.path), set(sys.modules)
    yield
    for kind, reg in REGISTRIES.items():
        for name in set(reg.names()) - before[kind]:
            reg.unregister(name)
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith("oneforcing_"):
            del sys.modules[name]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A scratch folder that looks like the checkout, plus what a reader is assumed to have."""
    cwd = tmp_path_factory.mktemp("readme")
    for name in ("recipes", "oneforcing", "plugins", "tests", "docs", "benchmarks", "Makefile", "setup.py"):
        (cwd / name).symlink_to(ROOT / name)
    (cwd / "prompts.txt").write_text("a red circle moving left quickly\n")
    # The study section's inputs: folders of clips for every system it names, and the demo study's
    # database (as `oneforcing study recipes/toy/study.yaml` leaves it), so study-report can run.
    from oneforcing.study.design import build_design
    from oneforcing.study.store import StudyStore
    from oneforcing.testing.study_videos import write_prompts, write_study_folders

    study_prompts = ["a small red circle moving left quickly on a gray background"]
    write_prompts(cwd / "study_prompts.txt", study_prompts)
    write_study_folders(cwd / "out", ("one_forcing", "sf1", "asd"), study_prompts, encode=False)
    demo_prompts = [p for p in (ROOT / "recipes/toy/study_prompts.txt").read_text().splitlines() if p.strip()]
    demo = {name: write_study_folders(cwd / "runs/study_demo" / side, ("videos",), demo_prompts, encode=False)["videos"]
            for name, side in (("one_forcing_demo", "student"), ("toy_teacher", "teacher"))}
    StudyStore.open(cwd / "runs/study_demo/study.sqlite",
                    build_design(demo, str(ROOT / "recipes/toy/study_prompts.txt")))
    ours = {name: str(cwd / "out" / name) for name in ("one_forcing", "sf1", "asd")}
    StudyStore.open(cwd / "runs/study/votes.sqlite", build_design(ours, str(cwd / "study_prompts.txt")))
    for run in ("demo", "one_forcing_framewise", "toy/one_forcing_framewise"):  # trained exports
        (cwd / "runs" / run).mkdir(parents=True)
        (cwd / "runs" / run / "export").symlink_to(TOY_CHECKPOINT)
    return cwd


SNIPPETS = readme_snippets(README.read_text(encoding="utf-8"))


def test_the_readme_has_commands():
    assert sum(s.count("\n") + 1 for _, s in SNIPPETS) >= 20, SNIPPETS


@pytest.mark.parametrize("where,shell", SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_readme_command(where, shell, checkout, capsys, monkeypatch):
    monkeypatch.chdir(checkout)
    for name, value in REAL_ENV.items():
        monkeypatch.setenv(name, value)
    calls = record(shell, checkout)
    assert calls, f"{where}: nothing ran"
    for argv in calls:
        try:
            check(argv, checkout, capsys)
        except (AssertionError, SystemExit) as exc:
            raise AssertionError(f"{where}: {shlex.join(argv)}\n  {exc}") from None


def test_toy_commands_really_ran(checkout):
    """The job table's generate -> eval pair, toy-data and vbench-export wrote their outputs (ran, not resolved)."""
    assert list((checkout / "out").glob("*.mp4")), "generate wrote no video"
    assert list((checkout / "out" / "score").glob("*")), "eval wrote no score"
    assert (checkout / "data" / "toy" / "train").is_dir()
    assert (checkout / "out" / "vbench" / "vbench_manifest.json").is_file(), "vbench-export wrote no manifest"


@pytest.mark.parametrize("bad,why", [
    ("oneforcing generate checkpoint=runs/demo/export prompts_file=prompts.txt out_dir=o "
     "text_encoder='{type: umt5, path: $WAN_1_3B}' vae='{type: wan_vae, path: $WAN_1_3B}'", "unexpanded"),
    ("oneforcing generate checkpoint=runs/demo/export prompts_file=prompts.txt out_dir=o "
     "text_encoder=\"{type: umt5, path: $WAN_1_3B}\" vae=\"{type: wan_vae, path: $WAN_1_3B}\" "
     "filename='{prompt}-{index}.mp4'", "needs YAML quotes"),
    ("deepspeed --num_gpus 8 recipes/run.py recipes/ode_pairs.yaml sampler.num_step=4", "num_step"),
    ("torchrun --nproc_per_node 2 recipes/run.py tests/recipes/…", "recipe file not found"),
    ("curl -O https://example.com/x", "does not know"),
    ("make demos", "make demos"),
    ("pip install .[gpu]", "no extra 'gpu'"),
])
def test_broken_commands_are_caught(bad, why, checkout, capsys, monkeypatch):
    """The two commands the README used to carry, and other drift, fail this test's checks."""
    monkeypatch.chdir(checkout)
    for name, value in REAL_ENV.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AssertionError, match=re.escape(why)):
        for argv in record(bad, checkout):
            check(argv, checkout, capsys)


def test_synopses_and_placeholders_are_told_apart():
    text = ("Run `oneforcing show RECIPE [k=v ...]` or `oneforcing generate checkpoint=DIR`; "
            "`DS_ACCELERATOR=cpu` is a setting;\n`torchrun --node_rank $RANK\n  recipes/run.py x.yaml`.\n"
            "```bash\nmake demo\n```\n```text\npython recipes/run.py RECIPE.yaml\n```\n")
    assert readme_snippets(text) == [("README.md:2", "torchrun --node_rank $RANK recipes/run.py x.yaml"),
                                     ("README.md:4", "make demo")]
