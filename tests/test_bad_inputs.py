"""Every case of the bad-input corpus (tests/bad_inputs/cases.py) through the CLI's own entry
point, in this process: exit 2, exactly one `error:` line on stderr that names what is wrong, no
traceback, and the case's folder byte for byte as it was (inputs unchanged, nothing written)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs.cases import CASES, TINY_TEACHER  # noqa: E402

from oneforcing.cli import main  # noqa: E402


class Fixtures:
    """Inputs that several cases copy (built once per session) and the case's own folder."""

    def __init__(self, shared: Path):
        self.shared = shared
        self.root: Path = shared  # set per case

    @property
    def toy_text_encoder(self) -> str:
        from oneforcing.toy.text_encoder import TOY_TEXT_ENCODER_PATH

        return TOY_TEXT_ENCODER_PATH

    @property
    def student(self) -> Path:
        import oneforcing

        return Path(oneforcing.__file__).parent / "assets" / "toy_student_base"

    @property
    def wan(self) -> Path:
        path = self.shared / "wan"
        if not path.exists():
            from oneforcing.testing.tiny_wan import save_tiny_wan

            save_tiny_wan(path, seed=0)
        return path

    @property
    def shards(self) -> Path:
        """A toy_data folder (job.json, index.json, two shards of two examples)."""
        path = self.shared / "shards"
        if not path.exists():
            code, err = run_cli(["toy-data", f"out={path}", "num_examples=4", "examples_per_shard=2",
                                 "text_encoder={type: umt5, path: '${assets:toy_text_encoder}', max_length: 16}"])
            assert code == 0, err
        return path

    def checkpointed_run(self, name: str = "run") -> Path:
        """A run folder of the tiny teacher recipe with checkpoints at steps 2 and 4 and a
        metrics.jsonl, as a killed run leaves it (written by the checkpoint manager itself)."""
        from oneforcing.config import load_recipe
        from oneforcing.trainer.checkpoint import CheckpointManager

        run = self.root / name
        recipe = load_recipe(TINY_TEACHER, [f"run_dir={run}", f"export.dir={run}/export"])
        manager = CheckpointManager(run / "checkpoints", rank=0, world_size=1)
        for step in (2, 4):
            states = {"generator": {"updates": step, "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}}},
                      "ema": {"decay": 0.9, "shadow": {"w": torch.zeros(3)}},
                      "trainer": {"step": step, "torch_rng": torch.get_rng_state()}}
            manager.save(step, states, {"recipe": recipe})
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n"
                                                   for s in range(1, 5)))
        return run


def run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit code, what the CLI printed to stderr). Log records go to a buffer of their own (the
    logger's handler, set up once per process, may hold a stream an earlier test closed)."""
    err, out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("oneforcing")
    handlers = logger.handlers[:]
    logger.handlers = [logging.StreamHandler(io.StringIO())]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        logger.handlers = handlers
    return code, err.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root, with a hash of each file's bytes."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Fixtures(tmp_path_factory.mktemp("bad_inputs_shared"))
    torch.set_num_threads(torch_threads)


def test_the_corpus_is_large_and_its_ids_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case_id,expect,make", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, expect, make, fixtures, tmp_path, monkeypatch):
    fixtures.root = tmp_path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OF_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.delenv("ONEFORCING_DEBUG", raising=False)
    argv = make(fixtures)
    before = snapshot(tmp_path)
    start = time.perf_counter()
    code, err = run_cli(argv)
    seconds = time.perf_counter() - start
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err[-3000:]
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert len(lines[0]) < 800
    assert re.search(expect, lines[0]), lines[0]
    assert snapshot(tmp_path) == before, "the case's folder changed"
    assert seconds < 30, f"took {seconds:.1f} s to fail"
    shutil.rmtree(tmp_path / "run" / "export", ignore_errors=True)


def test_command_line_references_resolve_without_a_recipe():
    """The good counterpart of the reference cases: `${...}` works in overrides alone."""
    from oneforcing.jobs.base import prepare

    recipe, _, job = prepare(None, ["_root=runs/x", "out=${_root}/data", "num_examples=${_n}", "_n=3"],
                             job_name="toy_data")
    assert recipe["out"] == "runs/x/data" and job.out == "runs/x/data" and job.world_args["num_examples"] == 3
    assert "_root" not in recipe
