"""`serve`: watch a causal student generate in a browser, and change its prompt mid-stream.

    oneforcing serve runs/demo/export                      # the toy world on a CPU: http://127.0.0.1:8766
    oneforcing serve recipes/serve.yaml checkpoint=runs/framewise/export    # Wan2.1 1.3B at 832x480

Type a prompt, press Enter: frames appear as the student generates them (an endless video: a
rolling KV cache, local_attn_size 21 with a sink of 1 by default); Enter again switches the prompt
from the next block on (`prompt_switch`: recache, the default, or keep; oneforcing/streaming/live.py).
The page shows frames/s (shown, and what the generator could do) and the latency to the first
frame. The defaults are the toy world's (text encoder, toy codec, 32x32); a real model names its
text_encoder, vae and size as `generate` does. Needs `pip install -e .[study]` (FastAPI, uvicorn).
"""

from __future__ import annotations

import logging

import torch

from oneforcing.errors import UserError
from oneforcing.jobs.base import Job, RunContext
from oneforcing.jobs.shared import (DEFAULT_TEXT_ENCODER, TOY_CODEC, build_sampler, load_generator_model,
                                    model_config, resolve_model_dir)
from oneforcing.jobs.study import _check_port_free, _is_loopback
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.registry import JOBS, TEXT_ENCODERS, VAES, build
from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.streaming.schedule import check_switch_mode
from oneforcing.weights import check_weights

log = logging.getLogger("oneforcing")

DEFAULT_SAMPLER = {"type": "causal_inference", "steps": [1000], "first_block_steps": [1000, 750, 500, 250],
                   "local_attn_size": 21, "sink_size": 1}


@JOBS.register("serve")
class ServeJob(Job):
    """A local page that streams a causal student's frames as they are generated; prompts switch mid-stream."""

    def __init__(self, checkpoint: str, text_encoder: dict | None = None, vae: dict | None = None,
                 model: dict | None = None, sampler: dict | None = None, scheduler: dict | None = None,
                 height: int = 32, width: int = 32, fps: int = 16, weights: str = "auto", dtype: str = "auto",
                 prompt_switch: str = "recache", host: str = "127.0.0.1", port: int = 8766,
                 prompt: str = "a large red circle moving right slowly on a black background",
                 max_seconds: float = 600.0, pace: bool = True):
        if not isinstance(port, int) or not 0 < port < 65536:
            raise UserError(f"must be a TCP port (1-65535), got {port!r}", key="port")
        for key, value in (("height", height), ("width", width), ("fps", fps), ("max_seconds", max_seconds)):
            if value <= 0:
                raise UserError(f"serve: '{key}' must be > 0, got {value}", key=key)
        # The checkpoint is looked for when the page starts (`show` resolves a recipe without weights).
        self.checkpoint, self.weights = checkpoint, check_weights(weights)
        self.sampler = build_sampler(sampler or DEFAULT_SAMPLER, scheduler)
        if not isinstance(self.sampler, CausalInference) or not self.sampler.cache_kwargs:
            raise UserError("serve: an endless stream needs the causal_inference sampler with a bounded cache "
                            "(local_attn_size)", key="sampler")
        self.text_encoder_cfg = text_encoder or dict(DEFAULT_TEXT_ENCODER)
        self.vae_cfg = vae or {"type": TOY_CODEC}
        self.model_cfg = model_config(model)
        self.height, self.width, self.fps, self.dtype = height, width, fps, dtype
        self.switch = check_switch_mode(prompt_switch)
        self.host, self.port, self.prompt = str(host), port, prompt
        self.max_seconds, self.pace = float(max_seconds), bool(pace)

    def build_engine(self, ctx: RunContext):
        """Everything the page needs, loaded and checked (also used by the browser test)."""
        from oneforcing.serve.engine import Engine

        device = ctx.device
        dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if self.dtype == "auto" else \
            parse_dtype(self.dtype, key="serve.dtype")
        vae = build(self.vae_cfg, VAES, path="vae", file=ctx.recipe_file).to(device)
        try:
            latent = tuple(vae.latent_shape(1, self.height, self.width))[1:]
        except ValueError as exc:
            raise UserError(f"serve: {exc}", key="height") from None
        self.weights_dir = resolve_model_dir(self.checkpoint, self.weights)
        model = load_generator_model(self.model_cfg, self.weights_dir, ctx.recipe_file, self.sampler.scheduler)
        model = model.to(device, dtype).eval().requires_grad_(False)
        encoder = build(self.text_encoder_cfg, TEXT_ENCODERS, path="text_encoder", file=ctx.recipe_file).to(device)
        return Engine(model, self.sampler, vae, encoder, latent, device, dtype, self.switch)

    def create_app(self, ctx: RunContext):
        try:
            from oneforcing.serve.app import create_app
        except ImportError as err:
            raise UserError(f"serve needs FastAPI and uvicorn ({err.name} is missing): pip install -e .[study]") from None
        return create_app(self.build_engine(ctx), fps=self.fps, pace=self.pace, max_seconds=self.max_seconds,
                          default_prompt=self.prompt)

    def run(self, ctx: RunContext) -> None:
        if not ctx.is_main:
            return
        try:
            import uvicorn
        except ImportError as err:
            raise UserError(f"serve needs FastAPI and uvicorn ({err.name} is missing): pip install -e .[study]") from None
        _check_port_free(self.host, self.port)
        app = self.create_app(ctx)  # loads the models
        if not _is_loopback(self.host):
            log.warning("serve: listening on %s: anyone who can reach it can run the model", self.host)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        print(f"serve: {self.weights_dir} on {ctx.device}, {self.height}x{self.width}, prompt switch "
              f"{self.switch}\nserve: open http://{shown}:{self.port}/  (Ctrl-C stops)", flush=True)
        uvicorn.run(app, host=self.host, port=self.port, log_level="warning", access_log=False)
