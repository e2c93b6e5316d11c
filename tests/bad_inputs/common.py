"""The bad-input corpus (helpers; the cases are in recipe_cases.py and file_cases.py): every way
a new user can hand the CLI something wrong that we know of.

Each case is `(id, expected error regex, make)`; `make(w)` builds the case's inputs inside the
case's own folder `w.root` (copies of the shared fixtures in `w`, plus whatever the case breaks)
and returns the command line. tests/test_bad_inputs.py runs every case the same way: exit 2, one
`error:` line that matches, no traceback, and the folder exactly as it was (inputs unchanged,
nothing half-written). Static bad recipes live in tests/bad_inputs/recipes/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPES = HERE / "recipes"
TINY_TEACHER = HERE.parent / "recipes" / "tiny_teacher.yaml"  # run_dir: ${env:OF_RUN_DIR} = w.root/run
TOY_TEXT = "text_encoder={type: umt5, path: '${assets:toy_text_encoder}', max_length: 16}"
CASES: list[tuple[str, str, object]] = []


def case(case_id: str, expect: str):
    def register(make):
        CASES.append((case_id, expect, make))
        return make
    return register


def toy_data(w, *extra: str) -> list[str]:
    return ["toy-data", "out=out", "num_examples=4", "examples_per_shard=2", TOY_TEXT, *extra]


def train(*extra: str, command: str = "run") -> list[str]:
    return [command, str(TINY_TEACHER), *extra]


def generate(w, *extra: str, checkpoint: str = "${assets:toy_student_base}") -> list[str]:
    return ["generate", f"checkpoint={checkpoint}", "prompt=a red ball", "out_dir=videos",
            TOY_TEXT, "vae={type: toy_codec}", "num_frames=3", "height=32", "width=32",
            "model={type: causal_wan, attention: sdpa}", *extra]


def copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst
