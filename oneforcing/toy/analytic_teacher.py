"""The exact toy teacher: the posterior mean of the clean latent given x_t and the prompt.

A toy video is fixed by its prompt up to each object's start position (uniform on a rectangle,
`toy_world.object_geometry`) and, with two objects, which half-frame lane each takes (a fair
coin). The codec encodes every 4x4 pixel patch on its own and the lanes are patch-aligned halves
of the frame, so the clean latent z is the concatenation of per-lane latents z_k, each set by its
own object: z_k = encode(render(background + object k at its start)) on lane k's positions. Under
x_t = (1 - s) z + s eps the Gaussian likelihood therefore factorises over lanes, and with the
starts on a grid of `grid_step` pixels (J_k candidates per object; where one start holds half the
posterior, as at low noise, it is refined `refine` times on local grids twice as fine, so a
latent between grid points is not snapped to one)

    E[z_k | x_t, lanes] = sum_j softmax_j(-|x_t,k - (1 - s) z_kj|^2 / (2 s^2)) z_kj
    p(lanes | x_t)     ~  prod_k mean_j exp(-|x_t,k - (1 - s) z_kj|^2 / (2 s^2))

computed exactly (in float64) over the grid; per-frame noise levels (t of shape [B, F]) weight
each frame's term by its own s. The model returns the flow velocity v = (x_t - E[z | x_t]) / s,
the quantity the learned teacher predicts, so a recipe swaps them with one line (the noise level
s of a model timestep t is the recipe scheduler's sigma(t), handed in as `scheduler`):

    real_score: {type: toy_analytic_teacher}

The unconditional text (the empty prompt) gets the posterior under a mixture of
`unconditional_prompts` train-split prompts (an approximation of the prompt prior: the grammar
has ~10^5 prompts); the conditional score is already exact, so sample it with cfg_scale 1 and use
DMD cfg_scale 1. Candidate latents are rendered on first use and kept for `cache_prompts` prompts.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from oneforcing.errors import UserError
from oneforcing.models.text_encoder import UMT5TextEncoder
from oneforcing.registry import MODELS
from oneforcing.schedulers.flow_match import FlowMatchScheduler
from oneforcing.toy.codec import ToyCodec
from oneforcing.toy.prompt_decoder import ToyPromptDecoder
from oneforcing.toy.text_encoder import TOY_MAX_LENGTH, TOY_TEXT_ENCODER_PATH
from oneforcing.toy.world import (
    DIRECTIONS, REF_FRAMES, REF_SIZE, ToyWorld, object_geometry, parse_prompt, place_start, render_scenes, start_bins,
)

MIN_SIGMA = 1e-4
DEFAULTS = {"grid_step": 1.0, "refine": 4, "unconditional_prompts": 16}
REFINE_ABOVE = 0.5   # refine when one grid start holds this much of the posterior ...
REFINE_BINS = 4      # ... on 4 x 4 starts spanning +-1 grid step around it (half the step)


@dataclass
class _LaneObject:
    """One object's candidate latents on its lane: the grid of starts and their (centred) latents."""
    obj: dict
    background: str
    rows: slice
    cols: slice
    radius: float
    velocity: list
    along: tuple[float, float]                      # the prior's start ranges
    across: tuple[float, float]
    starts: torch.Tensor = None                     # [J, 2] (along, across)
    step: tuple[float, float] = (1.0, 1.0)          # grid spacing
    centre: torch.Tensor = None                     # [F, D] float64, the candidates' mean
    z: torch.Tensor = None                          # [F, J, D] float32, centred (frame-major: batched matmuls)
    norms: torch.Tensor = None                      # [J, F] float64


def grid(lo: float, hi: float, step: float) -> list[float]:
    """Midpoints of ceil((hi - lo) / step) equal bins of [lo, hi] (one point for a tiny range)."""
    n = max(1, math.ceil((hi - lo) / step - 1e-9))
    return [lo + (hi - lo) * (i + 0.5) / n for i in range(n)]


@MODELS.register("toy_analytic_teacher")
class ToyAnalyticTeacher(nn.Module):
    """Exact flow velocity of the toy world: forward(x [B, F, C, H, W], t [B] or [B, F], text [B, L, D])."""

    config: dict = {}  # no network architecture: nothing for a job to check shapes against (models contract)

    def __init__(self, scheduler: FlowMatchScheduler, grid_step: float | None = None, refine: int | None = None,
                 frames: int = REF_FRAMES, size: int = REF_SIZE, unconditional_prompts: int | None = None,
                 cache_prompts: int = 48, text_encoder_path: str | None = None, pretrained: str | None = None,
                 causal: bool | None = None, start_positions: int | None = None):
        super().__init__()
        # Settings: the recipe's keys, else the `pretrained` folder's config.json (the asset; a learned
        # teacher's config has none of these keys), else the defaults. There are no weights to load.
        saved = {}
        if pretrained is not None and (Path(pretrained) / "config.json").is_file():
            saved = json.loads((Path(pretrained) / "config.json").read_text())
        grid_step = float(grid_step if grid_step is not None else saved.get("grid_step", DEFAULTS["grid_step"]))
        refine = int(refine if refine is not None else saved.get("refine", DEFAULTS["refine"]))
        unconditional_prompts = int(unconditional_prompts if unconditional_prompts is not None
                                    else saved.get("unconditional_prompts", DEFAULTS["unconditional_prompts"]))
        if grid_step <= 0 or unconditional_prompts < 0 or cache_prompts < 1 or refine < 0:
            raise UserError("toy_analytic_teacher: need grid_step > 0, refine >= 0, unconditional_prompts >= 0 "
                            "and cache_prompts >= 1")
        self.grid_step, self.frames, self.size = grid_step, int(frames), int(size)
        self.unconditional_prompts, self.cache_prompts = int(unconditional_prompts), int(cache_prompts)
        self.refine = int(refine)
        # The recipe's flow convention (handed in by the job or trainer that builds the model,
        # registry `declared`): its sigma(t) turns the model timesteps into noise levels.
        self.scheduler = scheduler
        # A world of discrete starts (toy_world start_positions n): the candidates are exactly its
        # n x n starts per object, so the posterior is exact without a grid or refinement.
        if start_positions is not None and start_positions < 1:
            raise UserError("toy_analytic_teacher: start_positions must be >= 1 (or null: any start)")
        self.start_positions = start_positions
        if start_positions is not None:
            self.refine = 0
        # Not a submodule: a trainer's .to(bf16) must not round the basis the candidates are encoded with.
        object.__setattr__(self, "codec", ToyCodec())
        self.f = self.codec.spatial_factor
        self.decoder = ToyPromptDecoder(UMT5TextEncoder(path=text_encoder_path or TOY_TEXT_ENCODER_PATH,
                                                        max_length=TOY_MAX_LENGTH))
        self._prompt_of: dict[bytes, str] = {}
        self._candidates: OrderedDict[str, list] = OrderedDict()
        self.dtype = torch.float32

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "ToyAnalyticTeacher":
        return cls(pretrained=path, **kwargs)

    # --- candidates ------------------------------------------------------------------------
    def _lane_slices(self, horizontal: bool, count: int):
        """Latent index slices (rows, cols) of each lane: halves across the direction of motion."""
        h = self.size // self.f
        full = slice(0, h)
        if count == 1:
            return [(full, full)]
        halves = [slice(0, h // 2), slice(h // 2, h)]
        return [(half, full) if horizontal else (full, half) for half in halves]

    def _render(self, part: "_LaneObject", starts: torch.Tensor) -> torch.Tensor:
        """Latents of the object at each (along, across) start, on its lane: [J, F, C*h*w] float64."""
        objects = [dict(part.obj, radius=part.radius, velocity=part.velocity,
                        start=list(place_start(part.obj["direction"], a, c, self.size))) for a, c in starts.tolist()]
        scenes = [{"background": part.background, "frames": self.frames, "size": self.size, "objects": [o]}
                  for o in objects]
        z = self.codec.encode(render_scenes(scenes))[..., part.rows, part.cols]
        return z.reshape(z.shape[0], z.shape[1], -1).double()

    def _lane_object(self, obj: dict, lane: tuple[float, float], background: str, rows: slice,
                     cols: slice) -> "_LaneObject":
        radius, velocity, along, across = object_geometry(obj, lane, self.frames, self.size)
        part = _LaneObject(obj, background, rows, cols, radius, velocity, along, across)
        if self.start_positions is not None:
            ga, gc = start_bins(*along, self.start_positions), start_bins(*across, self.start_positions)
        else:
            ga, gc = grid(*along, self.grid_step), grid(*across, self.grid_step)
        part.starts = torch.tensor([(a, c) for a in ga for c in gc], dtype=torch.float64)
        part.step = ((along[1] - along[0]) / len(ga), (across[1] - across[0]) / len(gc))
        z = self._render(part, part.starts)
        part.centre = z.mean(0)
        part.z, part.norms = self._centred(z, part.centre)
        return part

    def _hypotheses(self, prompt: str) -> list:
        """[(log prior, [_LaneObject per object]), ...] of one prompt (one per lane order), cached."""
        if prompt in self._candidates:
            self._candidates.move_to_end(prompt)
            return self._candidates[prompt]
        parsed = parse_prompt(prompt)
        objects, background = parsed["objects"], parsed["background"]
        count, horizontal = len(objects), DIRECTIONS[objects[0]["direction"]][0] != 0
        lanes = [(0.0, self.size / 2), (self.size / 2, float(self.size))] if count == 2 else [(0.0, float(self.size))]
        slices = self._lane_slices(horizontal, count)
        orders = [(0, 1), (1, 0)] if count == 2 else [(0,)]
        hyps = []
        for order in orders:  # order[k] = the lane object k takes
            parts = [self._lane_object(o, lanes[order[k]], background, *slices[order[k]])
                     for k, o in enumerate(objects)]
            hyps.append((-math.log(len(orders)), parts))
        self._candidates[prompt] = hyps
        while len(self._candidates) > self.cache_prompts:
            self._candidates.popitem(last=False)
        return hyps

    def _prompt(self, embedding: torch.Tensor) -> str:
        key = embedding.detach().float().cpu().numpy().round(4).tobytes()
        if key not in self._prompt_of:
            self._prompt_of[key] = self.decoder.decode(embedding)
        return self._prompt_of[key]

    def _prompt_hypotheses(self, prompt: str) -> list:
        if prompt:
            return self._hypotheses(prompt)
        if self.unconditional_prompts == 0:
            raise UserError("toy_analytic_teacher: called with the unconditional (empty) prompt but "
                            "unconditional_prompts is 0; sample with cfg_scale 1 (teacher_ode and dmd)")
        prompts = ToyWorld("train", self.unconditional_prompts, seed=0, frames=self.frames, size=self.size).prompts()
        prior = -math.log(len(prompts))
        return [(prior + lp, parts) for p in prompts for lp, parts in self._hypotheses(p)]

    # --- the posterior -----------------------------------------------------------------------
    @staticmethod
    def _centred(z: torch.Tensor, centre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rendered latents [J, F, D] -> centred [F, J, D] float32 and their squared norms [J, F] float64."""
        zc = (z - centre).float().transpose(0, 1).contiguous()
        return zc, (zc.double() ** 2).sum(-1).T

    @staticmethod
    def _loglik(xc: torch.Tensor, a: torch.Tensor, w: torch.Tensor, z: torch.Tensor, norms: torch.Tensor):
        """log N(x; a z_j, s^2) up to a constant shared by all j, from centred x and z (precision)."""
        inner = torch.bmm(z, xc.float()[:, :, None])[..., 0].T.double()         # [J, F]
        return ((2 * a * inner - a * a * norms) * w).sum(-1)                     # [J]

    def _lane_mean(self, part: "_LaneObject", xk: torch.Tensor, a: torch.Tensor, w: torch.Tensor):
        """(log evidence, E[z_k | x_k]) of one object on its lane; a concentrated posterior is refined
        on finer local grids (`refine` times), so low-noise inputs are not snapped to the grid."""
        xc = xk - a[:, None] * part.centre
        ll = self._loglik(xc, a, w, part.z, part.norms)
        # _loglik drops -w |x_c|^2, shared by this lane's candidates but not by the lane-order
        # hypotheses (each centres on its own objects' mean): the evidence that weighs them keeps it.
        evidence = torch.logsumexp(ll, 0) - math.log(ll.shape[0]) - (w * (xc.double() ** 2).sum(-1)).sum()
        p, z, starts, step = torch.softmax(ll, 0), part.z, part.starts, part.step
        for _ in range(self.refine):
            if float(p.max()) < REFINE_ABOVE:
                break
            best = starts[int(p.argmax())].tolist()
            axes = []
            for centre, h, (lo, hi) in zip(best, step, (part.along, part.across)):
                lo_, hi_ = max(lo, centre - h), min(hi, centre + h)
                axes.append(grid(lo_, hi_, 2 * h / REFINE_BINS) if hi_ > lo_ else [centre])
            starts = torch.tensor([(u, v) for u in axes[0] for v in axes[1]], dtype=torch.float64)
            step = tuple(2 * h / REFINE_BINS for h in step)
            z, norms = self._centred(self._render(part, starts), part.centre)
            p = torch.softmax(self._loglik(xc, a, w, z, norms), 0)
        mean = torch.bmm(p.float()[None, None, :].expand(z.shape[0], 1, -1), z)[:, 0]   # [F, D]
        return evidence, part.centre + mean.double()

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor, prompt: str) -> torch.Tensor:
        """E[z | x_t] for one sample: x [F, C, H, W], sigma [F] (per frame)."""
        s = sigma.double().clamp_min(MIN_SIGMA)
        a, w = 1 - s, 1 / (2 * s * s)                                            # [F]
        xd = x.double()
        log_evidence, means = [], []
        for log_prior, parts in self._prompt_hypotheses(prompt):
            mean, total = torch.zeros_like(xd), log_prior
            for part in parts:
                view = xd[:, :, part.rows, part.cols]
                evidence, m = self._lane_mean(part, view.reshape(xd.shape[0], -1), a, w)
                total = total + evidence
                mean[:, :, part.rows, part.cols] = m.reshape(view.shape)
            log_evidence.append(total)
            means.append(mean)
        weights = torch.softmax(torch.stack(log_evidence), 0)
        return torch.einsum("h,h...->...", weights, torch.stack(means)).to(x.dtype)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t, text: torch.Tensor, **_ignored) -> torch.Tensor:
        """The velocity eps - x0 = (x_t - E[x0 | x_t]) / sigma (other keywords of CausalWan are ignored)."""
        B, F = x.shape[:2]
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        sigma = self.scheduler.sigma(t)  # the recipe's convention, in float64 (t is)
        sigma = sigma.reshape(-1, 1).expand(B, F) if t.dim() <= 1 else sigma.expand(B, F)
        if (F, x.shape[-1] * self.f) != (self.frames, self.size):
            raise ValueError(f"toy_analytic_teacher: latents {tuple(x.shape)} are not the toy world's "
                             f"{self.frames} frames of {self.size} px")
        x0 = torch.stack([self.posterior_mean(x[i].cpu(), sigma[i].cpu(), self._prompt(text[i]))
                          for i in range(B)]).to(x.device, x.dtype)
        s = sigma.clamp_min(MIN_SIGMA).to(x.dtype)[:, :, None, None, None]
        return (x - x0) / s
