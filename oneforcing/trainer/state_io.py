"""Nested training state <-> safetensors + JSON, without pickle.

Optimizer and engine states are trees of dicts, lists, tuples, numbers, strings, enums and
tensors. `flatten` moves every tensor into a flat {name: tensor} map (saved with safetensors)
and leaves a JSON skeleton with placeholders; `unflatten` rebuilds the tree. Nothing is ever
unpickled, so a checkpoint cannot execute code when it is loaded.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from oneforcing.errors import UserError

_T, _TUPLE, _DICT, _ENUM, _SIZE = "__tensor__", "__tuple__", "__dict__", "__enum__", "__size__"


def flatten(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any) -> Any:
        if torch.is_tensor(o):
            name = f"t{len(tensors)}"
            # safetensors refuses shared or strided storage: store a compact copy.
            tensors[name] = o.detach().to("cpu").clone().contiguous()
            return {_T: name}
        if isinstance(o, torch.Size):
            return {_SIZE: list(o)}
        if isinstance(o, enum.Enum):
            return {_ENUM: o.value}
        if isinstance(o, dict):
            if all(isinstance(k, str) for k in o):
                return {k: walk(v) for k, v in o.items()}
            return {_DICT: [[walk(k), walk(v)] for k, v in o.items()]}  # int keys (optimizer state)
        if isinstance(o, tuple):
            return {_TUPLE: [walk(v) for v in o]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot store {type(o).__name__} in a checkpoint (only tensors and plain data)")

    return tensors, walk(obj)


def unflatten(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            if _T in o:
                return tensors[o[_T]]
            if _SIZE in o:
                return torch.Size(o[_SIZE])
            if _ENUM in o:
                return o[_ENUM]
            if _TUPLE in o:
                return tuple(walk(v) for v in o[_TUPLE])
            if _DICT in o:
                return {walk(k): walk(v) for k, v in o[_DICT]}
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_state(prefix: Path, obj: Any) -> None:
    """Write `prefix.safetensors` + `prefix.json` (inside a directory that is renamed into
    place as a whole by the checkpoint manager, so no per-file temp names are needed)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten(obj)
    save_file(tensors, str(prefix.with_suffix(".safetensors")))
    _fsync_write(prefix.with_suffix(".json"), json.dumps(skeleton).encode())


def load_state(prefix: Path) -> Any:
    """Read what `save_state` wrote; a truncated, foreign or inconsistent file is a UserError
    naming it (a checkpoint is user input once it sits on disk)."""
    prefix = Path(prefix)
    tensor_file, skeleton_file = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as exc:  # noqa: BLE001 - safetensors reports truncation by its own types
        raise UserError(f"{tensor_file}: unreadable tensor file ({_first_line(exc)})") from None
    try:
        skeleton = json.loads(skeleton_file.read_text())
        return unflatten(tensors, skeleton)
    except (OSError, ValueError) as exc:
        raise UserError(f"{skeleton_file}: unreadable state ({_first_line(exc)})") from None
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{skeleton_file}: state does not match {tensor_file.name} (a tensor it names is "
                        "missing, or the JSON is not a saved state)") from None


def check_state(prefix: Path) -> None:
    """What `load_state` would refuse, read from the safetensors header and the JSON skeleton
    only (no tensor data is loaded)."""
    from safetensors import safe_open

    prefix = Path(prefix)
    tensor_file, skeleton_file = prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")
    try:
        with safe_open(str(tensor_file), framework="pt") as f:
            names = set(f.keys())
    except Exception as exc:  # noqa: BLE001 - safetensors reports truncation by its own types
        raise UserError(f"{tensor_file}: unreadable tensor file ({_first_line(exc)})") from None
    try:
        skeleton = json.loads(skeleton_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{skeleton_file}: unreadable state ({_first_line(exc)})") from None
    wanted: set[str] = set()

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if _T in o:
                wanted.add(o[_T] if isinstance(o[_T], str) else repr(o[_T]))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(skeleton)
    if not isinstance(skeleton, dict) or wanted - names:
        raise UserError(f"{skeleton_file}: state does not match {tensor_file.name} (a tensor it names is "
                        "missing, or the JSON is not a saved state)")


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _fsync_write(tmp, json.dumps(data, indent=1).encode())
    os.replace(tmp, path)
