"""`curvature`: the teacher ODE's trajectory curvature (paper Eq. 2, Figure 3, Appendix B).

    job: curvature
    teacher: "${assets:toy_teacher}"          # diffusers folder, or a training export (weights: auto | raw | ema)
    model: {causal: false}                     # or {type: toy_analytic_teacher}
    scheduler: {type: flow_match, shift: 5.0}  # the flow-matching convention: the ODE's step spacing
    sampler: {type: teacher_ode, num_steps: 50, cfg_scale: 6.0}
    split: test                                # toy-world prompts ... or prompts_from: a latent_shards folder
    num_prompts: 32
    out: runs/toy/curvature                    # curvature.json, curvature.png

For each prompt (noise from derive_seed(recipe seed, "curvature", i): one deterministic seed per
prompt, as in Appendix B) the registered `teacher_ode` sampler integrates the ODE and every state
is kept (its per-step callback); `oneforcing.eval.curvature` turns the states into C(t_i), the
curvature mass at t >= high_t, the high/mid-noise ratio and their temporal-difference variants,
with bootstrap 95 % CIs over prompts. The JSON also holds every prompt's profile. Runs on one
process (rank 0 works, other ranks wait): 100 Wan trajectories are a batch job, not a sharded one.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import torch

from oneforcing.data.pipeline import encode_text
from oneforcing.data.shards import atomic_write_text
from oneforcing.errors import UserError
from oneforcing.weights import WEIGHTS_RENAMED, check_weights
from oneforcing.eval.curvature import (
    bootstrap_mean_ci, curvature_profile, normalised_profile, temporal_difference, trajectory_summaries,
)
from oneforcing.jobs.base import Job, RunContext, derive_seed
from oneforcing.jobs.shared import (DEFAULT_ODE_TEXT_ENCODER, ShardPrompts, ToyPrompts, build_sampler,
                                    check_teacher_paths, check_teacher_shapes, load_generator_model, model_config,
                                    resolve_model_dir, save_png)
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.registry import JOBS, TEXT_ENCODERS, build, validate
from oneforcing.samplers.teacher_ode import TeacherODE

log = logging.getLogger("oneforcing")

VARIANTS = ("latent", "temporal_difference")


def integrate(sampler: TeacherODE, model, noise: torch.Tensor, text: torch.Tensor,
              negative: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every state of the sampler's ODE ([B, N+1, ...] on the CPU, noise first; sigmas [N+1]).
    TeacherODE keeps the state in fp32 whatever the model's dtype (with shift 8 the first Euler
    steps move sigma by ~0.003, an update a bf16 state would round away)."""
    states: list[torch.Tensor] = []
    out = sampler(model, noise.float(), text, negative_text=negative,
                  callback=lambda i, t, x: states.append(x.float().cpu()))
    states.append(out.x0.float().cpu())
    sigmas = sampler.scheduler.sigma(torch.tensor(sampler.timesteps, dtype=torch.float64))
    return torch.stack(states, dim=1), sigmas


@JOBS.register("curvature")
class CurvatureJob(Job):
    """Curvature profiles C(t_i) of the teacher's ODE over prompts, with bootstrap CIs and a plot."""

    renamed_keys = {"use_ema": WEIGHTS_RENAMED}

    def __init__(self, teacher: str, out: str, prompts_from: str | None = None, split: str | None = None,
                 num_prompts: int = 32, batch_size: int = 8, model: dict | None = None,
                 sampler: dict | None = None, scheduler: dict | None = None, text_encoder: dict | None = None,
                 negative_prompt: str | None = None,
                 weights: str = "auto", frames: int = 21, size: int = 32, dtype: str = "auto",
                 high_t: float = 0.9, mid_band: tuple[float, float] = (0.3, 0.7), bootstrap: int = 2000,
                 plot: bool = True):
        if (prompts_from is None) == (split is None):
            raise UserError("curvature: give exactly one of 'prompts_from' (a latent_shards folder) or 'split' "
                            "(a toy-world split)")
        for key, value in (("num_prompts", num_prompts), ("batch_size", batch_size)):
            if value < 1:
                raise UserError(f"curvature: '{key}' must be >= 1, got {value}")
        if not (0 < high_t < 1 and 0 <= mid_band[0] < mid_band[1] <= high_t):
            raise UserError(f"curvature: need 0 < high_t < 1 and 0 <= mid_band[0] < mid_band[1] <= high_t, "
                            f"got high_t={high_t}, mid_band={list(mid_band)}")
        self.model_cfg = model_config({"causal": False, **(model or {})})
        self.sampler_cfg = {**(sampler or {"type": "teacher_ode", "num_steps": 50}), "keep_indices": []}
        self.sampler = build_sampler(self.sampler_cfg, scheduler)
        if not isinstance(self.sampler, TeacherODE):
            raise UserError(f"curvature: sampler must be {{type: teacher_ode, ...}} (the teacher's ODE), "
                            f"got '{self.sampler_cfg.get('type')}'")
        sigmas = self.sampler.scheduler.sigma(self.sampler.timesteps)
        starts = sigmas[:-1]
        if not bool((starts >= high_t).any()) or not bool(((starts >= mid_band[0]) & (starts <= mid_band[1])).any()):
            raise UserError(f"curvature: the sampler's {self.sampler.num_steps} steps put no step in the high "
                            f"(>= {high_t}) or mid {list(mid_band)} band; use more steps")
        self.text_cfg = text_encoder or dict(DEFAULT_ODE_TEXT_ENCODER)
        validate(self.text_cfg, TEXT_ENCODERS, path="text_encoder")
        if split is not None:
            ToyPrompts(split, num_prompts, 0, frames, size, key="num_prompts")  # validate now
        if dtype != "auto":
            parse_dtype(dtype, key="curvature.dtype")
        self.teacher, self.weights, self.prompts_from, self.split = teacher, check_weights(weights), prompts_from, split
        self.num_prompts, self.batch_size, self.negative_prompt = num_prompts, batch_size, negative_prompt
        self.frames, self.size, self.dtype = frames, size, dtype
        self.high_t, self.mid_band, self.bootstrap = float(high_t), (float(mid_band[0]), float(mid_band[1])), bootstrap
        self.out, self.plot = Path(out).expanduser(), plot

    @functools.cached_property
    def weights_dir(self):
        return resolve_model_dir(self.teacher, self.weights)

    def run(self, ctx: RunContext) -> dict | None:
        result = None
        if ctx.is_main:
            result = self._run(ctx)
        ctx.barrier()
        return result

    def _run(self, ctx: RunContext) -> dict:
        from tqdm.auto import tqdm

        t_start = time.perf_counter()
        device = ctx.device
        dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if self.dtype == "auto" \
            else parse_dtype(self.dtype)
        weights_dir = check_teacher_paths(self.teacher, self.weights, self.prompts_from, ctx.recipe_file)
        source = (ShardPrompts(self.prompts_from, self.num_prompts, key="num_prompts") if self.prompts_from is not None
                  else ToyPrompts(self.split, self.num_prompts, ctx.seed, self.frames, self.size, key="num_prompts"))
        encoder = build(self.text_cfg, TEXT_ENCODERS, path="text_encoder", file=ctx.recipe_file)
        negative_text = encoder.negative_prompt if self.negative_prompt is None else self.negative_prompt
        negative = encode_text(encoder, [negative_text])[0]
        model = load_generator_model(self.model_cfg, weights_dir, ctx.recipe_file, self.sampler.scheduler)
        check_teacher_shapes(model, source.shape, source.batch(range(1), encoder).embed, negative,
                             self.prompts_from or "toy codec")
        model = model.to(device, dtype)
        model.eval().requires_grad_(False)
        log.info("curvature: %d prompts, %d-step teacher ODE (shift %s, cfg_scale %s) from %s", self.num_prompts,
                 self.sampler.num_steps, self.sampler.scheduler.shift, self.sampler.cfg_scale, self.weights_dir)
        profiles: dict[str, list[torch.Tensor]] = {v: [] for v in VARIANTS}
        prompts: list[str] = []
        sigmas = None
        for b in tqdm(range(0, self.num_prompts, self.batch_size), desc="curvature", unit="batch"):
            idx = range(b, min(b + self.batch_size, self.num_prompts))
            batch = source.batch(idx, encoder)
            batch_prompts, embed = batch.prompts, batch.embed
            noise = torch.stack([torch.randn(source.shape, generator=torch.Generator().manual_seed(
                derive_seed(ctx.seed, "curvature", i))) for i in idx])
            neg = negative.expand(len(idx), *negative.shape[1:]).to(device, dtype)
            states, sigmas = integrate(self.sampler, model, noise.to(device), embed.to(device, dtype), neg)
            profiles["latent"].append(curvature_profile(states, sigmas))
            profiles["temporal_difference"].append(curvature_profile(temporal_difference(states), sigmas))
            prompts.extend(batch_prompts)
        del model, encoder
        result = self._summarise({k: torch.cat(v) for k, v in profiles.items()}, sigmas, prompts, ctx.seed)
        result["timing"] = {"total_s": time.perf_counter() - t_start, "device": device.type}
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "curvature.json", json.dumps(result, indent=1) + "\n")
        if self.plot:
            plot_profiles(result, self.out / "curvature.png")
        for v in VARIANTS:
            s = result["variants"][v]
            print(f"curvature [{v}]: mass at t >= {self.high_t}: {100 * s['mass_high']['mean']:.2f} % "
                  f"(95 % CI {fmt_ci(s['mass_high'], 100)}), high/mid ratio {s['ratio']['mean']:.2f} "
                  f"(95 % CI {fmt_ci(s['ratio'])}); dt-weighted mass {100 * s['mass_high_dt']['mean']:.2f} %",
                  flush=True)
        print(f"curvature: wrote {self.out / 'curvature.json'}", flush=True)
        return result

    def _summarise(self, profiles: dict[str, torch.Tensor], sigmas: torch.Tensor, prompts: list[str],
                   seed: int) -> dict:
        variants = {}
        for name, C in profiles.items():
            per = trajectory_summaries(C, sigmas, self.high_t, self.mid_band)
            variants[name] = {
                **{k: bootstrap_mean_ci(v, self.bootstrap, seed=derive_seed(seed, "bootstrap", name, k) % 2**31)
                   for k, v in per.items()},
                "mean_profile": C.mean(0).tolist(),
                "mean_normalised_profile": normalised_profile(C).mean(0).tolist(),
                "per_prompt": {"profile": C.tolist(), **{k: v.tolist() for k, v in per.items()}},
            }
        return {"teacher": str(self.weights_dir), "model": self.model_cfg, "sampler": self.sampler_cfg,
                "shift": self.sampler.scheduler.shift,
                "source": self.prompts_from or f"toy_world:{self.split}", "num_prompts": len(prompts),
                "prompts": prompts, "high_t": self.high_t, "mid_band": list(self.mid_band),
                "t": sigmas[:-1].tolist(), "variants": variants}


def fmt_ci(summary: dict, scale: float = 1.0) -> str:
    ci = summary.get("ci95")
    return "n/a" if ci is None else f"[{scale * ci[0]:.2f}, {scale * ci[1]:.2f}]"


def plot_profiles(result: dict, path: Path) -> Path:
    """Figure 3 analogue: every prompt's peak-normalised profile (thin) and their mean (thick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = result["t"]
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=(5 * len(VARIANTS), 3.6), sharey=True)
    for ax, name in zip(axes, VARIANTS):
        v = result["variants"][name]
        for row in normalised_profile(torch.tensor(v["per_prompt"]["profile"])).tolist():
            ax.plot(t, row, color="tab:blue", alpha=0.15, linewidth=0.7)
        ax.plot(t, v["mean_normalised_profile"], color="tab:red", linewidth=2, label="mean over prompts")
        ax.axvline(result["high_t"], color="gray", linestyle=":", linewidth=1)
        ax.set_xlim(1.0, 0.0)
        ax.set_xlabel("t (noise level; 1 = pure noise)")
        ax.set_title(f"{name}: mass at t >= {result['high_t']}: {100 * v['mass_high']['mean']:.1f} %")
    axes[0].set_ylabel("C(t) / peak")
    axes[0].legend(loc="upper right")
    fig.suptitle(f"trajectory curvature, {result['num_prompts']} prompts ({Path(result['teacher']).name})")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path
