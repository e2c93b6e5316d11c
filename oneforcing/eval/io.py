"""Generated videos on disk <-> (videos, prompts), in VBench's layout.

A folder holds one file per sample named "{prompt}-{index}.mp4" (VBench's convention; .gif and
the other VIDEO_EXTENSIONS read too); the prompt is the file name minus "-{index}", unless the
folder has the `generate` job's generate_manifest.json, whose {"file", "prompt"} entries win
(its default file names are slugs, which lose the prompt). Alternatively a
.safetensors file holds "video" [N, T, 3, H, W] in [-1, 1] and a "prompts" JSON list in its header.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from oneforcing.data.videos import VIDEO_EXTENSIONS, from_uint8, read_video, write_video
from oneforcing.errors import UserError

_INDEX_SUFFIX = re.compile(r"-\d+$")
MANIFEST = "generate_manifest.json"


def prompt_from_filename(path: str | Path) -> str:
    return _INDEX_SUFFIX.sub("", Path(path).stem)


def _plain(name, manifest: Path) -> str:
    """A manifest's `file` entry: a plain file name inside the manifest's folder."""
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", "..") or "\\" in name:
        raise UserError(f"{manifest}: 'file' entry {str(name)[:80]!r} is not a plain file name in its folder")
    return name


def load_videos(path: str | Path, max_videos: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """-> (videos [N, T, 3, H, W] in [-1, 1], prompts)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        try:
            with safe_open(str(path), framework="pt") as f:
                video = f.get_tensor("video").float()
                prompts = json.loads((f.metadata() or {})["prompts"])
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: need a 'video' tensor and a 'prompts' header list ({exc})") from None
        if len(prompts) != video.shape[0]:
            raise UserError(f"{path}: {video.shape[0]} videos but {len(prompts)} prompts")
        return video[:max_videos], prompts[:max_videos]
    if not path.is_dir():
        raise UserError(f"{path}: not a folder of videos nor a .safetensors file")
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))["videos"]
            named = {path / _plain(e["file"], manifest): str(e["prompt"]) for e in entries}
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{manifest}: expected {{'videos': [{{'file', 'prompt'}}, ...]}} ({exc})") from None
        files = sorted(named)
    else:
        files = sorted(p for p in path.iterdir()
                       if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
        for f in files:  # without a manifest, the name is the only record of the prompt
            if not _INDEX_SUFFIX.search(f.stem):
                raise UserError(f"{f}: not named '{{prompt}}-{{index}}{f.suffix}' (e.g. 'a red ball-0{f.suffix}'), "
                                f"and {path} has no {MANIFEST} saying which prompt it shows")
        named = {f: prompt_from_filename(f) for f in files}
    if not files:
        raise UserError(f"{path}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    files = files[:max_videos]
    videos, prompts, shape = [], [], None
    for f in files:
        if not f.is_file():
            raise UserError(f"{manifest}: lists {f.name}, which does not exist")
        v = from_uint8(read_video(f))
        if shape is None:
            shape = v.shape
        elif v.shape != shape:
            raise UserError(f"{f}: shape {tuple(v.shape)} differs from {files[0].name}'s {tuple(shape)}")
        videos.append(v)
        prompts.append(named[f])
    return torch.stack(videos), prompts


def save_videos(path: str | Path, videos: torch.Tensor, prompts: list[str], fps: int = 16,
                ext: str = ".mp4") -> list[Path]:
    """Write VBench-style "{prompt}-{index}{ext}" files (index counts repeats of a prompt), or one
    .safetensors file when `path` ends in .safetensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file({"video": videos.detach().float().cpu().contiguous()}, str(tmp),
                  metadata={"prompts": json.dumps(list(prompts))})
        os.replace(tmp, path)
        return [path]
    path.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    out = []
    for v, p in zip(videos, prompts):
        i = seen.get(p, 0)
        seen[p] = i + 1
        out.append(path / f"{p}-{i}{ext}")
        write_video(out[-1], v, fps=fps)
    return out
