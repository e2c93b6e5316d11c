"""The on-disk shard format (latents and ODE pairs) and its atomic writer.

A dataset is a folder:

    index.json                  {"format": "oneforcing.shards", "version": 1, "kind": "latents",
                                 "num_examples": N, "fields": {name: {"shape": [...], "dtype": "float16"}},
                                 "shards": [{"file": "shard-00000.safetensors", "num_examples": n}, ...],
                                 "info": {free-form provenance: codec, text encoder, source ...}}
    shard-00000.safetensors     one tensor per field, examples stacked on dim 0: latent [n, F, C, H, W],
    shard-00001.safetensors     prompt_embed [n, L, D], prompt_mask [n, L] (bool) ...; the header's
    ...                         string metadata holds "kind", "num_examples", "prompts" (a JSON list)
                                and optionally "metadata" (a JSON list of per-example dicts).

Kinds and their required fields (`KINDS`): "latents" = latent + prompt_embed + prompt_mask;
"ode_pairs" = states [K, F, C, H, W] (the ODE states at the kept step indices) + timesteps [K] +
clean [F, C, H, W] (the endpoint) + prompt_embed + prompt_mask. Extra fields are allowed.
Every file is written to a temporary name and renamed (os.replace), so a shard or index that
exists is complete; a shard file is the unit of resumption for the jobs that write them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from oneforcing.errors import UserError

FORMAT, VERSION, INDEX = "oneforcing.shards", 1, "index.json"
KINDS: dict[str, tuple[str, ...]] = {
    "latents": ("latent", "prompt_embed", "prompt_mask"),
    "ode_pairs": ("states", "timesteps", "clean", "prompt_embed", "prompt_mask"),
}
# Fields stored only up to the shard's longest real token, with the mask field that gives their
# full length (index.json and the loaders use that length: readers pad the stored rows back).
TRIMMED = {"prompt_embed": "prompt_mask"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.bool: "bool", torch.int64: "int64", torch.int32: "int32", torch.uint8: "uint8"}
_ST_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "BOOL": "bool", "I64": "int64",
              "I32": "int32", "U8": "uint8"}


def dtype_from_name(name: str, *, what: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"{what}: unknown dtype {name!r}; one of {', '.join(DTYPES)}")
    return DTYPES[name]


def mask_from_embedding(embed: torch.Tensor) -> torch.Tensor:
    """[B, L, D] with zeroed padding -> [B, L] bool (a token is real iff its row is non-zero)."""
    return embed.ne(0).any(dim=-1)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_shard(path: str | Path, tensors: dict[str, torch.Tensor], prompts: list[str],
                kind: str = "latents", metadata: list[dict] | None = None) -> None:
    """Write one shard atomically. `tensors` hold the examples stacked on dim 0."""
    if kind not in KINDS:
        raise ValueError(f"unknown shard kind {kind!r}; one of {', '.join(KINDS)}")
    missing = [k for k in KINDS[kind] if k not in tensors]
    if missing:
        raise ValueError(f"{kind} shard needs fields {missing}")
    n = len(prompts)
    for name, t in tensors.items():
        if t.shape[0] != n:
            raise ValueError(f"field {name!r} holds {t.shape[0]} examples, prompts {n}")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"metadata holds {len(metadata)} entries, prompts {n}")
    tensors = trim_to_real_tokens(tensors)
    header = {"format": FORMAT, "version": str(VERSION), "kind": kind, "num_examples": str(n),
              "prompts": json.dumps(list(prompts))}
    if metadata is not None:
        header["metadata"] = json.dumps(metadata)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)
    os.replace(tmp, path)


def trim_to_real_tokens(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each TRIMMED field cut after the shard's longest real token (by its mask [n, L]): padding
    is zero by contract, and a 512-token UMT5 prompt is rarely longer than ~100 tokens."""
    out = dict(tensors)
    for name, mask_name in TRIMMED.items():
        if name not in out or mask_name not in out:
            continue
        x, mask = out[name], out[mask_name].bool()
        if x.shape[1] != mask.shape[1]:
            raise ValueError(f"field {name!r} has {x.shape[1]} tokens, {mask_name!r} {mask.shape[1]}")
        real = mask.any(dim=0).nonzero()
        keep = max(int(real.max()) + 1 if real.numel() else 0, 1)
        if x[:, keep:].count_nonzero():
            raise ValueError(f"field {name!r} is non-zero past its mask: padding must be zeroed")
        out[name] = x[:, :keep]
    return out


def read_shard_header(path: str | Path) -> dict:
    """{"kind", "num_examples", "fields": {name: {"shape" (per example), "dtype"}}} of one shard;
    a missing, truncated or foreign file is a UserError naming it. A TRIMMED field's shape is its
    full length (its mask's), whatever number of rows the shard stores."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: shard file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            fields = {}
            for key in f.keys():
                sl = f.get_slice(key)
                shape, dtype = list(sl.get_shape()), sl.get_dtype()
                fields[key] = {"shape": shape[1:], "dtype": _ST_DTYPES.get(dtype, dtype),
                               "rows": shape[0] if shape else None}
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors reports truncation etc. by its own types
        raise UserError(f"{path}: not a readable safetensors shard ({str(exc).splitlines()[0]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a oneforcing shard (header format {meta.get('format')!r})")
    n = int(meta.get("num_examples", -1))
    for key, spec in fields.items():
        if spec.pop("rows") != n:
            raise UserError(f"{path}: field {key!r} does not hold num_examples={n} rows")
    for name, mask_name in TRIMMED.items():
        if name in fields and mask_name in fields and fields[name]["shape"]:
            full = fields[mask_name]["shape"][0]
            if fields[name]["shape"][0] > full:
                raise UserError(f"{path}: field {name!r} holds {fields[name]['shape'][0]} tokens, "
                                f"its mask {mask_name!r} {full}")
            fields[name]["shape"] = [full, *fields[name]["shape"][1:]]
    return {"kind": meta.get("kind"), "num_examples": n, "fields": fields}


def shard_files(directory: str | Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob("*.safetensors") if not p.name.startswith("."))


def write_index(directory: str | Path, info: dict | None = None, kind: str | None = None,
                files: list[str] | None = None) -> dict:
    """Check the shards agree on kind and fields, write index.json atomically. The shards are
    `files` (names in the folder: a job indexes what it wrote) or every *.safetensors there."""
    directory = Path(directory)
    files = shard_files(directory) if files is None else [directory / name for name in files]
    if not files:
        raise UserError(f"{directory}: no *.safetensors shards to index")
    shards, fields, first = [], None, None
    for p in files:
        h = read_shard_header(p)
        kind = kind or h["kind"]
        if h["kind"] != kind:
            raise UserError(f"{p}: shard kind {h['kind']!r} differs from {kind!r}")
        if fields is None:
            fields, first = h["fields"], p.name
        elif h["fields"] != fields:
            raise UserError(f"{p}: fields {h['fields']} differ from {first}'s {fields}")
        shards.append({"file": p.name, "num_examples": h["num_examples"]})
    index = {"format": FORMAT, "version": VERSION, "kind": kind,
             "num_examples": sum(s["num_examples"] for s in shards), "fields": fields,
             "shards": shards, "info": info or {}}
    atomic_write_text(directory / INDEX, json.dumps(index, indent=1) + "\n")
    return index


def read_index(directory: str | Path) -> dict:
    path = Path(directory) / INDEX
    if not path.is_file():
        raise UserError(f"{path}: shard index is missing (is '{directory}' a shard folder written by "
                        "toy_data / prepare_data?)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{path}: not a {FORMAT} v{VERSION} index")
    check_index(index, path)
    return index


def check_index(index: dict, path: Path) -> None:
    """The index's structure, before anything trusts it: plain shard file names inside the
    folder, counts that are integers, fields with a shape and a dtype (floating latents)."""
    shards, fields = index.get("shards"), index.get("fields")
    if not isinstance(shards, list) or not shards:
        raise UserError(f"{path}: 'shards' must be a non-empty list of {{file, num_examples}}")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("num_examples"), int) \
                or isinstance(shard.get("num_examples"), bool) or shard["num_examples"] < 0:
            raise UserError(f"{path}: shards[{i}] must be {{file, num_examples (an integer >= 0)}}")
        name = shard.get("file")
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", "..") \
                or "\\" in name:
            raise UserError(f"{path}: shards[{i}].file {str(name)[:80]!r} is not a plain file name in the folder")
    if not isinstance(index.get("num_examples"), int):
        raise UserError(f"{path}: 'num_examples' must be an integer")
    if not isinstance(fields, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("shape"), list) and isinstance(v.get("dtype"), str)
            for v in fields.values()):
        raise UserError(f"{path}: 'fields' must map each field to {{shape, dtype}}")
    for name in ("latent", "prompt_embed", "states", "clean", "timesteps"):
        dtype = fields.get(name, {}).get("dtype")
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"{path}: field {name!r} is {dtype}; it must be floating ({', '.join(DTYPES)})")


class ShardWriter:
    """Accumulate examples and write numbered shards `{prefix}-{n:05d}.safetensors` as they fill.

        with ShardWriter(out, kind="latents", examples_per_shard=256) as w:
            w.add(latent=..., prompt_embed=..., prompt_mask=..., prompt="...", metadata={...})
    `close()` writes the last partial shard, then index.json (`index=True`). Examples are stored in
    the dtype they arrive in; `dtypes` casts named fields on the way in (e.g. latent -> float16)."""

    def __init__(self, directory: str | Path, kind: str = "latents", examples_per_shard: int = 256,
                 prefix: str = "shard", start: int = 0, index: bool = True, info: dict | None = None,
                 dtypes: dict[str, torch.dtype] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown shard kind {kind!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kind, self.per_shard, self.prefix = kind, int(examples_per_shard), prefix
        self.next_shard, self.index, self.info = start, index, info
        self.dtypes = dtypes or {}
        self._buf: list[dict] = []
        self.written: list[Path] = []

    def add(self, *, prompt: str, metadata: dict | None = None, **tensors: torch.Tensor) -> None:
        self._buf.append({"prompt": prompt, "metadata": metadata, "tensors": tensors})
        if len(self._buf) >= self.per_shard:
            self.flush()

    def add_batch(self, *, prompts: list[str], metadata: list[dict] | None = None,
                  **tensors: torch.Tensor) -> None:
        for i, p in enumerate(prompts):
            self.add(prompt=p, metadata=None if metadata is None else metadata[i],
                     **{k: v[i] for k, v in tensors.items()})

    def flush(self) -> None:
        if not self._buf:
            return
        names = self._buf[0]["tensors"].keys()
        stacked = {k: torch.stack([e["tensors"][k] for e in self._buf]) for k in names}
        stacked = {k: v.to(self.dtypes[k]) if k in self.dtypes else v for k, v in stacked.items()}
        has_meta = any(e["metadata"] is not None for e in self._buf)
        path = self.directory / f"{self.prefix}-{self.next_shard:05d}.safetensors"
        write_shard(path, stacked, [e["prompt"] for e in self._buf], self.kind,
                    [e["metadata"] or {} for e in self._buf] if has_meta else None)
        self.written.append(path)
        self.next_shard += 1
        self._buf = []

    def close(self) -> None:
        self.flush()
        if self.index:
            write_index(self.directory, self.info, self.kind)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:  # on an error keep what is complete, write nothing half-done
            self.close()
