"""The study's design: which videos are compared, in which pairs.

The first system is "ours"; each prompt (and each sample index below `samples_per_prompt`) makes
one A/B pair against every other system, as in the paper's Table 2 (`pairing: all`: every pair of
systems, for a Bradley-Terry ranking). Attention checks add gold pairs: a clip of ours against its
degraded copy (GOLD), whose answer is known. Which side shows which system is drawn per annotator
and pair when the pair is shown (store.py), not here.

Everything a user gives is checked here, before the database is touched: folders exist, every
`{prompt}-{i}.mp4` exists in every folder, each resolves to a file directly inside its folder
(a prompt such as "../x" or a symlink leading out of the folder is refused), and each is a whole
mp4 container (a truncated or foreign file is refused before its hash is committed).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from oneforcing.errors import UserError
from oneforcing.video import mp4_problem

VIDEO_NAME = "{prompt}-{sample}.mp4"  # VBench's layout, as `generate` and `toy_eval` write it


GOLD = "degraded copy"  # the system name of an attention check's known-worse clip


@dataclass(frozen=True)
class Pair:
    prompt: str
    sample: int
    a: str  # ours (or the first of the two in system order); the good clip of a gold pair
    b: str
    kind: str = "main"  # main | gold


@dataclass
class StudyDesign:
    systems: dict[str, Path]  # name -> folder (resolved); the first is ours
    prompts_file: Path
    prompts: list[str]
    prompts_sha256: str
    samples_per_prompt: int
    pairs: list[Pair]
    gold_folder: Path | None = None  # the attention checks' degraded clips (made by media.make_gold)

    def folder(self, system: str) -> Path:
        return self.gold_folder if system == GOLD else self.systems[system]

    @property
    def ours(self) -> str:
        return next(iter(self.systems))

    def video(self, system: str, prompt: str, sample: int) -> Path:
        return self.folder(system) / VIDEO_NAME.format(prompt=prompt, sample=sample)

    def videos(self) -> list[tuple[str, Path]]:
        """Every (system, file) the study shows, in a fixed order."""
        shown = [(name, self.video(name, p, i)) for name in self.systems for p in self.prompts
                 for i in range(self.samples_per_prompt)]
        return shown + [(GOLD, self.video(GOLD, p.prompt, p.sample)) for p in self.pairs if p.kind == "gold"]

    def with_gold(self, folder: Path, picks: list[tuple[str, int]]) -> "StudyDesign":
        """This design plus one gold pair per (prompt, sample): ours against `folder`'s degraded copy."""
        folder = folder.resolve()
        for prompt, sample in picks:
            check_video(folder, VIDEO_NAME.format(prompt=prompt, sample=sample), "attention_checks")
        gold = [Pair(p, i, self.ours, GOLD, "gold") for p, i in picks]
        return StudyDesign(self.systems, self.prompts_file, self.prompts, self.prompts_sha256,
                           self.samples_per_prompt, self.pairs + gold, folder)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_systems(systems) -> dict[str, Path]:
    """`{name: folder, ...}` or `[folder, ...]` (named by the folder) -> {name: resolved folder}."""
    if isinstance(systems, dict):
        items = [(str(k), v) for k, v in systems.items()]
    elif isinstance(systems, (list, tuple)):
        items = [(Path(str(v)).name, v) for v in systems]
    else:
        raise UserError("expected {name: folder, ...} or [folder, ...]", key="systems")
    if len(items) < 2:
        raise UserError(f"needs two or more video folders (ours first), got {len(items)}", key="systems")
    out: dict[str, Path] = {}
    for name, folder in items:
        if not isinstance(folder, str) or not folder:
            raise UserError(f"expected a folder path, got {folder!r}", key=f"systems.{name}")
        if name in out:
            raise UserError(f"two folders named '{name}': name them, systems={{ours: DIR, base: DIR}}",
                            key="systems")
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"no such folder: {folder}", key=f"systems.{name}")
        out[name] = path.resolve()
    return out


def read_unique_lines(path, key: str, noun: str, check=None, comments: bool = False,
                      same: str = "") -> tuple[list, bytes]:
    """(the non-blank lines of a UTF-8 file -- after a `#` comment is cut, with `comments` -- each as
    `check` makes it (its ValueError names what is wrong with the line), none twice; the file's bytes).
    A missing or undecodable file, a bad or repeated line, or no line at all is one error naming `key`."""
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"no such {noun} file: {path}", key=key)
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", file=str(path), key=key) from None
    values, seen = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = (line.split("#", 1)[0] if comments else line).strip()
        if not line:
            continue
        try:
            value = check(line) if check else line
        except ValueError as err:
            raise UserError(f"line {lineno}: {err}: {line[:60]!r}", file=str(path), key=key) from None
        if value in seen:
            raise UserError(f"line {lineno}: {line[:60]!r} repeats line {seen[value]}{same}", file=str(path), key=key)
        seen[value] = lineno
        values.append(value)
    if not values:
        raise UserError(f"no {noun} lines in the file", file=str(path), key=key)
    return values, data


def _prompt(line: str) -> str:
    if "/" in line or "\\" in line or "\0" in line or line.startswith("."):
        raise ValueError("a prompt cannot hold '/', '\\' or start with '.' (it names a file)")
    return line


def read_prompts(path: str | os.PathLike) -> tuple[list[str], str]:
    """Prompts, one a line (blank lines skipped), and the sha256 of the file's bytes."""
    prompts, data = read_unique_lines(path, "prompts", "prompt", _prompt)
    return prompts, hashlib.sha256(data).hexdigest()


def check_video(folder: Path, name: str, system: str) -> Path:
    """`folder/name` if it is a file that resolves to a file directly inside `folder`."""
    path = folder / name
    try:
        exists = path.is_file()
    except OSError as err:  # e.g. a prompt too long for a file name
        raise UserError(f"{folder}: cannot open '{name[:80]}': {err.strerror}", key=_key(system)) from None
    if not exists:
        raise UserError(f"{folder}: missing '{name}'", key=_key(system))
    real = Path(os.path.realpath(path))
    if real.parent != folder:  # folder is already resolved: a symlink or '..' led outside it
        raise UserError(f"{folder}: '{name}' leads outside the folder (to {real})", key=_key(system))
    problem = mp4_problem(path)  # before its hash is committed: a broken clip would be voted on blind
    if problem is not None:
        raise UserError(f"{folder}: '{name}' is not a playable mp4 ({problem})", key=_key(system))
    return path


def _key(system: str) -> str:
    return system if system == "attention_checks" else f"systems.{system}"


def build_design(systems, prompts: str, samples_per_prompt: int = 1, pairing: str = "ours") -> StudyDesign:
    if isinstance(samples_per_prompt, bool) or not isinstance(samples_per_prompt, int) or samples_per_prompt < 1:
        raise UserError(f"must be an integer >= 1, got {samples_per_prompt!r}", key="samples_per_prompt")
    folders = parse_systems(systems)
    prompt_list, sha = read_prompts(prompts)
    names = list(folders)
    comparisons = [(a, b) for j, a in enumerate(names) for b in names[j + 1:]] if pairing == "all" \
        else [(names[0], b) for b in names[1:]]
    for name, folder in folders.items():
        for prompt in prompt_list:
            for i in range(samples_per_prompt):
                check_video(folder, VIDEO_NAME.format(prompt=prompt, sample=i), name)
    pairs = [Pair(prompt, i, a, b) for prompt in prompt_list for i in range(samples_per_prompt)
             for a, b in comparisons]
    return StudyDesign(folders, Path(prompts).expanduser().resolve(), prompt_list, sha, samples_per_prompt, pairs)
