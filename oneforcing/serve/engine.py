"""The live generator behind `oneforcing serve`: endless streams whose prompt can change mid-stream.

One model, one text encoder and one codec are shared by every open stream; a lock serialises their
use block by block, so two tabs interleave instead of corrupting each other's state. Each stream has
its own `LiveRollout` (rolling KV cache: memory flat however long it runs), noise generator and
stream decoder. Frames leave as PNG bytes (stdlib zlib: no imaging dependency).
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from dataclasses import dataclass

import torch

from oneforcing.samplers.causal_inference import CausalInference
from oneforcing.streaming.live import LiveRollout

MAX_PROMPT = 500  # characters


def png_bytes(frame: torch.Tensor) -> bytes:
    """frame [3, H, W] in [-1, 1] -> a PNG file (8-bit RGB)."""
    rgb = ((frame.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb.numpy())  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


@dataclass
class Frame:
    index: int        # video frame number in the stream
    png: bytes
    prompt: str       # the prompt the frame's block was generated under
    gen_seconds: float  # generator + decode time of its block, per frame


class Engine:
    """What every stream shares: the model (eval, no grad), sampler, codec, text encoder."""

    def __init__(self, model, sampler: CausalInference, vae, encoder, latent_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype, switch: str = "recache"):
        self.model, self.sampler, self.vae, self.encoder = model, sampler, vae, encoder
        self.latent_shape, self.device, self.dtype, self.switch = latent_shape, device, dtype, switch
        self.lock = threading.Lock()
        self._texts: dict[str, torch.Tensor] = {}

    def encode(self, prompt: str) -> torch.Tensor:
        """[1, L, D] on the device; the last few prompts are kept."""
        if prompt not in self._texts:
            with torch.no_grad():
                emb = self.encoder.encode([prompt]).to(self.device, self.dtype)
            if len(self._texts) >= 32:
                self._texts.pop(next(iter(self._texts)))
            self._texts[prompt] = emb
        return self._texts[prompt]

    def open(self, prompt: str, seed: int) -> "Stream":
        with self.lock:
            return Stream(self, prompt, seed)


class Stream:
    """One viewer's endless video. `set_prompt` may be called from any thread; the change takes
    effect at the next block (`next_frames`)."""

    def __init__(self, engine: Engine, prompt: str, seed: int):
        self.engine, self.prompt, self._pending = engine, prompt, None
        self.noise = torch.Generator().manual_seed(seed)
        self.renoise = torch.Generator().manual_seed(seed + 1)
        self.live = LiveRollout(engine.sampler, engine.model, engine.encode(prompt), batch_size=1,
                                switch=engine.switch, rng=self.renoise)
        decoder = engine.vae.stream_decoder()
        self.decode = decoder if decoder is not None else engine.vae.decode
        self.frames = 0

    def set_prompt(self, prompt: str) -> None:
        self._pending = prompt

    def next_frames(self) -> list[Frame]:
        """Generate and decode the next block (under the engine's lock)."""
        e = self.engine
        with e.lock, torch.no_grad():
            t0 = time.perf_counter()
            pending, self._pending = self._pending, None
            if pending is not None and pending != self.prompt:
                self.live.set_text(e.encode(pending))
                self.prompt = pending
            n = e.model.frames_per_block
            noise = torch.randn(1, n, *e.latent_shape, generator=self.noise).to(e.device, e.dtype)
            _, _, x0 = self.live.step(noise)
            video = self.decode(x0.float())[0]  # [T, 3, H, W]
            if e.device.type == "cuda":
                torch.cuda.synchronize(e.device)
            per_frame = (time.perf_counter() - t0) / max(len(video), 1)
        out = []
        for frame in video:
            out.append(Frame(self.frames, png_bytes(frame.cpu()), self.prompt, per_frame))
            self.frames += 1
        return out
