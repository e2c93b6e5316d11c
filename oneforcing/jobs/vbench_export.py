"""`vbench_export`: a pinned evaluation protocol. Renders a prompt set in VBench's folder layout
(`{prompt}-{index}.mp4`, VBench's standard mode) with `generate`, and writes beside the videos a
manifest from which a reader can rerun the row and audit the score.

    job: vbench_export
    checkpoint: runs/one_forcing_framewise/export
    weights: auto                       # raw | ema | auto: what the export declares (oneforcing/weights.py)
    prompt_set: extended                # official: the model reads the files' names; extended: LLM-extended
    prompts_file: prompts/vbench/all_dimension_extended.txt   # what the model reads
    names_file: prompts/vbench/all_dimension.txt              # extended only: VBench's prompts, line for line
    samples_per_prompt: 5
    out_dir: runs/one_forcing_framewise/vbench

out_dir/vbench_manifest.json records: the prompt set (declared kind, files, sha256 and, when the
hash is a published file's, which one), samples per prompt, the recipe seed and every video's seed,
the inference weights asked for and used, the sampler (first-frame enhancement and its timesteps),
resolution, frames and fps, the code (commit, or HEAD plus a hash of the uncommitted diff), the
machine, and a speed record of this run (rank 0): DiT-only and end-to-end (DiT + VAE decode)
frames/s, latency to the first decoded frame, peak memory, the device by name. out_dir/recipe.yaml
is the resolved recipe: `oneforcing run out_dir/recipe.yaml out_dir=NEW` reruns it.

The videos are rendered into a hidden sibling `.NAME.partial/` and the folder becomes out_dir only
once every video and the manifest are in it: out_dir is never half-written. A rerun after an
interruption resumes the partial folder (each mp4 is itself written atomically) if its settings
are the same (the folder keeps their hash); a partial folder of other settings, and an out_dir
that already exists and is not empty, are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from oneforcing.config import dump_recipe
from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext, missing_path
from oneforcing.jobs.generate import VBENCH_FILENAME, Generate
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.provenance import code_version, machine
from oneforcing.registry import JOBS
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.weights import check_weights, weights_label
from oneforcing.video import DEFAULT_FPS, DEFAULT_QUALITY

MANIFEST = "vbench_manifest.json"
RECIPE = "recipe.yaml"
RESUME_KEY = ".settings_sha256"
PROMPT_SETS = ("official", "extended")
# sha256 of the raw bytes of published prompt files, so a manifest says which one it read (a file
# that matches none is recorded as such: a reader sees at once that it is not the published set).
KNOWN_PROMPT_FILES = {
    "f9b50654f81ab732b9235d5bb91f0c3a4d152fac19249ce3a3a9185b2d80d8c3":
        "VBench prompts/all_dimension.txt (946 prompts; also Self-Forcing prompts/vbench/all_dimension.txt)",
    "c78f1ad32974503efaa8cc935347ace88f3a8b571adde6687bc8425bbf417cf3":
        "Self-Forcing prompts/vbench/all_dimension_extended.txt (946 extended prompts)",
    "58ed0665de52c1bdb4820af01327f5cc1138bedbeedcc63902751056f6bf5768":
        "VBench prompts/augmented_prompts/gpt_enhanced_prompts/all_dimension_longer.txt",
    "54fb940aea8f1ede1e8728f62d3e67efacdd7b341fb8a6c91308bcba874d5d5d":
        "VBench prompts/augmented_prompts/Wan2.1-T2V-1.3B/all_dimension_aug_wanx_seed42.txt",
}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_prompt_file(path: Path) -> dict:
    sha = file_sha256(path)
    return {"file": str(path), "sha256": sha, "published_as": KNOWN_PROMPT_FILES.get(sha)}


@JOBS.register("vbench_export")
class VBenchExport(Job):
    """Render a prompt set in VBench's folder layout plus a manifest that pins the protocol and its speed."""

    def __init__(self, checkpoint: str, text_encoder: dict, vae: dict, out_dir: str, prompts_file: str,
                 prompt_set: str = "official", names_file: str | None = None, samples_per_prompt: int = 5,
                 seeds: list[int] | None = None, model: dict | None = None, sampler: dict | None = None,
                 scheduler: dict | None = None, num_frames: int = 81, height: int = 480, width: int = 832,
                 fps: int = DEFAULT_FPS, weights: str = "auto", dtype: str = "auto", batch_size: int = 1,
                 quality: float = DEFAULT_QUALITY, progress: bool = True):
        # Only what needs no file is checked here (`oneforcing show` builds the job without the
        # weights or prompts); run() checks the paths before anything is written.
        if prompt_set not in PROMPT_SETS:
            raise UserError(f"must be one of {', '.join(PROMPT_SETS)}, got {prompt_set!r}", key="prompt_set")
        if prompt_set == "extended" and not names_file:
            raise UserError("an extended prompt set needs 'names_file': VBench's own prompts, line for line, "
                            "which name the videos (VBench finds a video by its prompt)", key="names_file")
        if prompt_set == "official" and names_file:
            raise UserError("official prompts name their own videos; drop 'names_file' or set "
                            "prompt_set: extended", key="names_file")
        for key, value in (("samples_per_prompt", samples_per_prompt), ("batch_size", batch_size),
                           ("num_frames", num_frames), ("height", height), ("width", width), ("fps", fps)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"must be an integer >= 1, got {value!r}", key=key)
        if dtype != "auto":
            parse_dtype(dtype, key="dtype")
        self.out_dir = Path(out_dir).expanduser()
        if not self.out_dir.name or self.out_dir.name in (".", ".."):
            raise UserError(f"'{out_dir}' names no folder of its own", key="out_dir")
        self.prompt_set, self.weights = prompt_set, check_weights(weights)
        self.generate_kwargs = dict(
            checkpoint=checkpoint, text_encoder=text_encoder, vae=vae, model=model, sampler=sampler,
            scheduler=scheduler, prompts_file=prompts_file, names_file=names_file,
            samples_per_prompt=samples_per_prompt, seeds=seeds, num_frames=num_frames, height=height,
            width=width, fps=fps, filename=VBENCH_FILENAME, weights=weights, dtype=dtype,
            batch_size=batch_size, skip_existing=True, quality=quality, progress=progress)

    @property
    def partial_dir(self) -> Path:
        return self.out_dir.parent / f".{self.out_dir.name}.partial"

    def check(self, recipe_file: str | None) -> None:
        """Everything a bad recipe or a used out_dir gets wrong, before anything is written."""
        out = self.out_dir
        if out.exists():
            if (out / MANIFEST).is_file():
                raise UserError(f"{out} already holds a finished export ({MANIFEST}); choose another "
                                "out_dir or remove it", key="out_dir")
            if not out.is_dir() or any(out.iterdir()):
                raise UserError(f"{out} exists and is not an empty folder; the export writes a folder "
                                "of its own", key="out_dir")
        for key in ("checkpoint", "prompts_file", "names_file"):
            path = self.generate_kwargs[key]
            if path is not None and not Path(path).expanduser().exists():
                raise missing_path(path, key, recipe_file)

    def settings_key(self, seed: int, gen: Generate) -> str:
        """What decides the videos' pixels: the settings (not out_dir, not the progress bar), the
        prompt files' bytes and the weights files' sizes and times. A partial folder is resumed only
        by a run with the same key, so no export mixes videos of two settings or two trainings."""
        decides = {k: v for k, v in self.generate_kwargs.items() if k != "progress"}
        decides["prompt_bytes"] = [file_sha256(Path(self.generate_kwargs[k]).expanduser())
                                   for k in ("prompts_file", "names_file") if self.generate_kwargs[k]]
        decides["weights_files"] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                                          for f in gen.weights_dir.iterdir() if f.is_file())
        text = json.dumps({**decides, "seed": seed}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def claim_partial(self, key: str, is_main: bool) -> None:
        partial, stamp = self.partial_dir, self.partial_dir / RESUME_KEY
        if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() != key or \
                not stamp.is_file() and partial.is_dir() and any(partial.iterdir()):
            raise UserError(f"{partial} holds videos of an interrupted export with other settings; remove it "
                            "(or rerun with those settings to finish it)", key="out_dir")
        if is_main and not stamp.is_file():
            partial.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stamp, key + "\n")

    def run(self, ctx: RunContext) -> None:
        self.check(ctx.recipe_file)
        gen = Generate(out_dir=str(self.partial_dir), **self.generate_kwargs)
        items = gen.plan(ctx.seed)
        self.claim_partial(self.settings_key(ctx.seed, gen), ctx.is_main)
        try:
            gen.run(ctx)  # renders into the partial folder; resumes one left by an interrupted run
        except BaseException:
            if ctx.is_main and self.partial_dir.is_dir() and \
                    [p.name for p in self.partial_dir.iterdir()] == [RESUME_KEY]:
                shutil.rmtree(self.partial_dir)  # a failed start leaves nothing behind
            raise
        if not ctx.is_main:
            return
        missing = [it.path.name for it in items if not it.path.is_file()]
        if missing:  # a rank failed without raising here: never publish an incomplete folder
            raise UserError(f"{len(missing)} of {len(items)} videos are missing from {self.partial_dir} "
                            f"(first: {missing[0]!r}); rerun to finish them", key="out_dir")
        manifest = self.manifest(ctx, gen, items)
        atomic_write_text(self.partial_dir / RECIPE, dump_recipe(ctx.recipe) if ctx.recipe else "")
        atomic_write_text(self.partial_dir / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
        (self.partial_dir / RESUME_KEY).unlink()
        if self.out_dir.is_dir():  # the empty folder check() allowed: replaced by the finished one
            self.out_dir.rmdir()
        os.replace(self.partial_dir, self.out_dir)
        speed = manifest["speed"]
        print(f"vbench_export: {len(items)} videos and {MANIFEST} in {self.out_dir} "
              f"({manifest['prompts']['set']} prompts, {manifest['weights']['used']} weights"
              + (f", DiT {speed['dit_frames_per_s']:.2f} frames/s on {speed['device']})" if speed else ")"),
              flush=True)

    def manifest(self, ctx: RunContext, gen: Generate, items: list) -> dict:
        base = gen.manifest(items)
        kw = self.generate_kwargs
        prompts = {"set": self.prompt_set, "count": len(gen.prompts),
                   "read_by_model": describe_prompt_file(Path(kw["prompts_file"]).expanduser()),
                   "names_file": None}
        if kw["names_file"] is not None:
            prompts["names_file"] = describe_prompt_file(Path(kw["names_file"]).expanduser())
        sampler = gen.sampler
        enhancement = None  # a sampler without a first block of its own (a teacher ODE, say)
        steps = {}
        if isinstance(sampler, CausalInference):
            enhancement = sampler.first_block_steps != sampler.steps
            steps = {"first_block_timesteps": sampler.first_block_steps, "timesteps": sampler.steps}
        speed = gen.timing.record() if gen.timing is not None else None
        if speed is not None:
            speed.update({"measured_on": f"rank 0 of {ctx.world_size}", "batch_size": kw["batch_size"],
                          "dtype": str(gen.compute_dtype(ctx.device)).removeprefix("torch."),
                          "end_to_end_is": "sampler + VAE decode; text encoding and mp4 writing excluded"})
        return {
            "format": "oneforcing vbench_export 1",
            "vbench": {"videos_path": ".", "naming": VBENCH_FILENAME, "mode": "standard"},
            "prompts": prompts,
            "samples_per_prompt": kw["samples_per_prompt"],
            "seed": ctx.seed,
            # The initial noise of a video comes from its seed alone; the re-noising between the
            # first block's steps from the seed of its batch's first video (generate.py): so the
            # batch size is part of the protocol when first-frame enhancement is on.
            "seeds": ("listed per video below" if kw["seeds"] is not None else
                      "per video below, derived from the recipe seed and the video number"),
            "batch_size": kw["batch_size"],
            "weights": {"requested": self.weights, "used": weights_label(gen.weights_dir),
                        "folder": base["weights"], "checkpoint": base["checkpoint"]},
            "sampler": {"config": gen.sampler_cfg, "scheduler": kw["scheduler"],
                        "first_frame_enhancement": enhancement, **steps},
            "video": {"num_frames": gen.num_frames, "height": gen.height, "width": gen.width, "fps": gen.fps,
                      "quality": gen.quality},
            "code": code_version(),
            "machine": machine(),
            "speed": speed,
            "recipe_file": ctx.recipe_file,
            "videos": base["videos"],
        }
