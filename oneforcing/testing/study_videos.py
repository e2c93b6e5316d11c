"""Small real mp4 folders for study tests: one folder per system, `{prompt}-{i}.mp4` in each.

Each system's clips have their own colour (so a screenshot or a test can tell them apart) and a
bar that moves across the frame (so a playing video visibly changes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oneforcing.video import write_mp4

COLOURS = [(200, 60, 60), (60, 160, 220), (90, 190, 90), (220, 190, 60)]
PROMPTS = ["a red circle moving left", "a blue square moving up", "two green triangles moving right"]


def clip(colour: tuple[int, int, int], frames: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    video = np.zeros((frames, size, size, 3), np.uint8)
    video[:] = np.asarray(colour, np.uint8) // 3
    for t in range(frames):
        x = (seed * 7 + t * size // frames) % (size - 8)
        video[t, :, x:x + 8] = colour
    return video


def write_study_folders(root: str | Path, systems=("ours", "baseline"), prompts=PROMPTS, samples: int = 1,
                        encode: bool = True) -> dict:
    """{system: folder} with one clip per (prompt, sample) in every folder; encode=False writes a few
    distinct bytes in mp4 boxes instead of a video (enough for tests that never play them, and much
    quicker)."""
    root = Path(root)
    folders = {}
    for s, name in enumerate(systems):
        folder = root / name
        for p, prompt in enumerate(prompts):
            for i in range(samples):
                path = folder / f"{prompt}-{i}.mp4"
                if encode:
                    write_mp4(path, clip(COLOURS[s % len(COLOURS)], seed=p + i))
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(stub_mp4(f"{name} {prompt} {i}".encode() * 20))
        folders[name] = str(folder)
    return folders


def stub_mp4(payload: bytes) -> bytes:
    """The boxes of an mp4 container (ftyp, an empty moov, mdat holding `payload`) and no playable
    stream: passes the study's container check, never decoded."""
    def box(kind: bytes, body: bytes) -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + kind + body

    return box(b"ftyp", b"isom\0\0\2\0isomiso2") + box(b"moov", b"") + box(b"mdat", payload)


def write_prompts(path: str | Path, prompts=PROMPTS) -> Path:
    path = Path(path)
    path.write_text("".join(f"{p}\n" for p in prompts), encoding="utf-8")
    return path


def open_study(root: str | Path, systems=("ours", "baseline"), prompts=PROMPTS, encode: bool = True,
               attention_checks: int = 0, seed: int = 0, **protocol):
    """(store, design) of a study made in `root` from fresh clips, as the `study` job makes it (with
    attention checks' degraded clips when asked for: those need encode=True)."""
    from oneforcing.study.design import build_design
    from oneforcing.study.media import gold_picks, make_gold
    from oneforcing.study.protocol import build_protocol
    from oneforcing.study.store import StudyStore

    root = Path(root)
    folders = write_study_folders(root / "videos", systems, prompts, encode=encode)
    proto = build_protocol(attention_checks=attention_checks, **protocol)
    design = build_design(folders, str(write_prompts(root / "prompts.txt", prompts)), pairing=proto.pairing)
    if attention_checks:
        picks = gold_picks(design, attention_checks, seed)
        make_gold(design, root / "attention", picks, seed)
        design = design.with_gold(root / "attention", picks)
    return StudyStore.open(root / "study.sqlite", design, proto, seed), design
