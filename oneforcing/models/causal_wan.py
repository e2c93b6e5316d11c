"""CausalWan: Wan2.1's text-to-video DiT as a bidirectional, block-causal or streaming model.

Parameter names are those of diffusers' `WanTransformer3DModel` (T2V), so the `transformer/`
folder of Wan-AI/Wan2.1-T2V-1.3B-Diffusers loads as is and `save_pretrained` writes a folder that
diffusers loads back. In bidirectional mode the output equals diffusers' forward (fp32, to 1e-5).

Layouts: latents x [B, F, C, H, W] (the project's layout; converted inside), timesteps t on the
1000 grid as [B] (one per sample) or [B, F] (per frame), text [B, L, D_text] (UMT5 embeddings,
padding zeroed; Wan uses no text mask). Output: velocity v (= eps - x0), same layout as x.

    v = model(x, t, text, *, kv_cache=None, frame_offset=0, write_cache=False,
              clean_x=None, clean_t=None, causal=None, return_hidden=())

Modes (frames are grouped into autoregressive blocks of `frames_per_block`):
- bidirectional (`causal=False`, or the model was built with causal=False): full attention.
- block-causal full sequence (`causal=True`, no cache): a frame sees all frames of earlier
  blocks and of its own block.
- streaming (`kv_cache=model.new_kv_cache(B, max_frames)`, or bounded for long videos with
  `local_attn_size=` / `sink_size=`: see wan_rolling_cache): x holds the frames starting at
  `frame_offset` (RoPE time index offset accordingly); they see the cached frames [0, offset) and
  themselves (block-causally if x spans several blocks). `write_cache=True` stores their K/V
  (detached) as context for later blocks: run it on the clean output at t=0. The text K/V are
  computed on the first call and reused. Streaming equals the block-causal full forward.
- teacher forcing (`clean_x` [B, F, C, H, W], Causal Forcing stage 1): the sequence is
  [clean ; noisy]; clean tokens are block-causal among themselves; noisy block i sees clean blocks
  < i and its own noisy tokens; both copies share RoPE positions. Clean frames use `clean_t`
  (default 0). The output is v for the noisy x only.
- `return_hidden=(i, j, ...)`: returns `(v, {i: h_i, ...})` where h_i [B, N, dim] are the token
  states after block i (0-indexed; negative indices count from the end; in teacher forcing the
  noisy tokens only) — for critic/discriminator heads.

Construction: `CausalWan(pretrained=DIR)` (registered as "causal_wan") reads DIR's config.json
and names DIR as its `weights_folder`; it loads nothing (whoever places the model loads the
weights: `oneforcing.models.weights.load_pretrained`, or the trainer's ZeRO-3 streaming).
`CausalWan.from_pretrained(DIR)` is both: built on the meta device, then the checkpoint's
tensors assigned. `CausalWan.from_config(dict)`: random init from diffusers' keys.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from oneforcing.attention import FrameMask, resolve_attention
from oneforcing.errors import UserError
from oneforcing.models.wan_blocks import ConditionEmbedder, FP32LayerNorm, WanBlock
from oneforcing.models.wan_cache import WanKVCache
from oneforcing.models.wan_io import WAN_DEFAULTS, check_wan_config, load_config, save_folder
from oneforcing.models.wan_rolling_cache import RollingKVCache
from oneforcing.models.wan_rope import rope_cos_sin
from oneforcing.models.weights import PretrainedWeights, load_pretrained
from oneforcing.registry import MODELS


@MODELS.register("causal_wan")
class CausalWan(PretrainedWeights, nn.Module):
    config: dict  # the diffusers transformer config (the models contract: what jobs check shapes against)

    def __init__(self, pretrained: str | None = None, config: dict | None = None, frames_per_block: int = 1,
                 causal: bool = True, attention: str = "auto", gradient_checkpointing: bool = False):
        super().__init__()
        if pretrained is None and config is None:
            raise UserError("causal_wan needs `pretrained` (a diffusers transformer folder) or `config`")
        if frames_per_block < 1:
            raise UserError(f"frames_per_block must be >= 1, got {frames_per_block}")
        cfg = load_config(pretrained) if pretrained is not None else {}
        if config is not None:
            check_wan_config(config, key="config")
        cfg = {**WAN_DEFAULTS, **cfg, **(config or {})}
        if cfg.get("image_dim") is not None or cfg.get("added_kv_proj_dim") is not None:
            raise UserError("causal_wan supports Wan text-to-video transformers only (image_dim / "
                            "added_kv_proj_dim are set: an image-to-video checkpoint?)")
        if cfg["attention_head_dim"] % 2 or cfg["attention_head_dim"] < 6:
            raise UserError(f"attention_head_dim must be even and >= 6, got {cfg['attention_head_dim']}")
        self.config = cfg
        self.weights_folder = str(pretrained) if pretrained is not None else None
        self.frames_per_block = int(frames_per_block)
        self.causal = bool(causal)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.patch_size = tuple(cfg["patch_size"])
        self.heads = cfg["num_attention_heads"]
        self.head_dim = cfg["attention_head_dim"]
        self.dim = dim = self.heads * self.head_dim
        self.out_channels = cfg["out_channels"] or cfg["in_channels"]

        self.patch_embedding = nn.Conv3d(cfg["in_channels"], dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.condition_embedder = ConditionEmbedder(dim, cfg["freq_dim"], cfg["text_dim"])
        self.blocks = nn.ModuleList([
            WanBlock(dim, cfg["ffn_dim"], self.heads, cfg["cross_attn_norm"], cfg["eps"])
            for _ in range(cfg["num_layers"])
        ])
        self.norm_out = FP32LayerNorm(dim, cfg["eps"], elementwise_affine=False)
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(self.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # Wan knows where a token is only through relative RoPE offsets; a deep model at 480p infers
        # absolute position from the frame's edges, a 3-layer toy on a 4 x 4 token grid cannot, and a
        # toy prompt fixes where objects start. The toy models add this (zero at init: same function).
        grid = cfg.get("absolute_position_grid")
        self.absolute_position = (nn.Parameter(torch.zeros(1, 1, grid[0] * grid[1], dim)) if grid else None)

        # The backend is an attribute of this instance only (no global state).
        self.attention = attention
        self.attn = resolve_attention(attention, owner=f"causal_wan({cfg['num_layers']} layers)")

    def init_when_absent(self) -> set[str]:
        """A pretrained Wan folder has no absolute positions: they start at zero (the same function)."""
        return {"absolute_position"} if self.absolute_position is not None else set()

    # --- construction / IO ---------------------------------------------------------------------
    @staticmethod
    def check_recipe(kwargs: dict, *, path: str, file: str | None) -> None:
        """Called by the registry's strict building (and `oneforcing show`): the `config:` values."""
        if kwargs.get("config") is not None:
            check_wan_config(kwargs["config"], file=file, key=f"{path}.config" if path else "config")

    @classmethod
    def from_config(cls, config: dict, **kwargs) -> "CausalWan":
        """Random init from diffusers config keys (missing keys take Wan's defaults)."""
        return cls(config={k: v for k, v in config.items() if not k.startswith("_")}, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | None = None, device=None,
                        **kwargs) -> "CausalWan":
        """Load a diffusers `transformer/` folder (config.json + single or sharded safetensors).
        Built on the meta device then filled with the checkpoint's tensors (no random init)."""
        with torch.device("meta"):
            model = cls(pretrained=str(path), **kwargs)
        load_pretrained(model)
        return model.to(device=device, dtype=dtype) if (device or dtype) else model

    def save_pretrained(self, out_dir: str | Path) -> None:
        """diffusers format: config.json (WanTransformer3DModel keys) + diffusion_pytorch_model.safetensors."""
        save_folder(self.state_dict(), self.config, out_dir)

    # --- frame/token helpers ---------------------------------------------------------------------
    def tokens_per_frame(self, height: int, width: int) -> int:
        """Tokens of one latent frame of size height x width (1560 for 60x104 with 2x2 patches)."""
        return (height // self.patch_size[1]) * (width // self.patch_size[2])

    def block_ranges(self, num_frames: int) -> list[tuple[int, int]]:
        """[(first, end)] of each autoregressive block; the last may be shorter."""
        n = self.frames_per_block
        return [(s, min(s + n, num_frames)) for s in range(0, num_frames, n)]

    def new_kv_cache(self, batch_size: int, max_frames: int, height: int | None = None,
                     width: int | None = None, dtype: torch.dtype | None = None, device=None,
                     local_attn_size: int | None = None, sink_size: int = 0,
                     sink_rope: str = "adjacent") -> WanKVCache | RollingKVCache:
        """An empty cache for one rollout of up to `max_frames` latent frames. Buffers are allocated
        now if height/width (latent) are given, else on the first forward. With `local_attn_size`
        the cache is bounded instead (any number of frames; see wan_rolling_cache)."""
        if local_attn_size is not None:
            cache = RollingKVCache(len(self.blocks), batch_size, self.heads, self.head_dim, local_attn_size,
                                   sink_size, sink_rope)
        else:
            cache = WanKVCache(len(self.blocks), batch_size, max_frames, self.heads, self.head_dim)
        if height is not None and width is not None:
            p = self.proj_out.weight
            cache.allocate(self.tokens_per_frame(height, width), dtype or p.dtype, device or p.device)
        return cache

    # --- forward -----------------------------------------------------------------------------------
    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, F, C, H, W] -> [B, F', S, dim] patch tokens grouped by (patched) frame."""
        h = self.patch_embedding(x.permute(0, 2, 1, 3, 4))  # [B, dim, F', H', W']
        if self.absolute_position is not None:
            grid = list(self.config["absolute_position_grid"])
            if list(h.shape[3:]) != grid:
                raise UserError(f"this model's absolute_position_grid is {grid} tokens, the input gives "
                                f"{list(h.shape[3:])}: it only runs at the frame size it was built for")
            return (h.flatten(3).permute(0, 2, 3, 1) + self.absolute_position.to(h.dtype)).contiguous()
        return h.flatten(3).permute(0, 2, 3, 1).contiguous()

    def _per_frame_t(self, t, B: int, Fp: int, device) -> torch.Tensor:
        """Timesteps -> [B, F'] or [B, 1] (shared by all frames: cheaper and diffusers-exact)."""
        t = torch.as_tensor(t, device=device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            return t.reshape(B, 1)
        return t[:, :: self.patch_size[0]][:, :Fp]

    def _mask(self, mode: str, frames: torch.Tensor, k_frames: torch.Tensor, S: int) -> FrameMask | None:
        if mode == "full":
            return None
        if mode == "teacher_forcing":
            mask = FrameMask.teacher_forcing(frames, self.frames_per_block, S)
        else:
            mask = FrameMask.block_causal(frames, k_frames, self.frames_per_block, S)
        return None if mask.is_full() else mask

    def _text_kv(self, text: torch.Tensor, cache: WanKVCache | None) -> list:
        # Cached text K/V carry no graph: recompute them when they should get gradients.
        need_grad = torch.is_grad_enabled() and (text.requires_grad or any(
            p.requires_grad for m in (self.condition_embedder.text_embedder, *(b.attn2 for b in self.blocks))
            for p in m.parameters()))
        if cache is not None and cache.cross is not None and not need_grad:
            return cache.cross
        ctx = self.condition_embedder.text_embedder(text)
        kv = [blk.attn2.kv(ctx) for blk in self.blocks]
        if cache is not None and cache.cross is None:
            cache.cross = [(k.detach(), v.detach()) for k, v in kv]
        return kv

    def forward(self, x: torch.Tensor, t, text: torch.Tensor, *, kv_cache: WanKVCache | None = None,
                frame_offset: int = 0, write_cache: bool = False, clean_x: torch.Tensor | None = None,
                clean_t=None, causal: bool | None = None, return_hidden=()):
        self.require_weights()
        B, F, C, H, W = x.shape
        pt, ph, pw = self.patch_size
        if F % pt or H % ph or W % pw:
            raise ValueError(f"latent [F={F}, H={H}, W={W}] is not divisible by the patch {self.patch_size}")
        Fp, Hp, Wp = F // pt, H // ph, W // pw
        S = Hp * Wp
        causal = self.causal if causal is None else causal
        dtype = x.dtype

        tokens = self._tokens(x)
        t_frames = self._per_frame_t(t, B, Fp, x.device)
        frames = torch.arange(frame_offset, frame_offset + Fp)
        if clean_x is not None:
            if kv_cache is not None:
                raise ValueError("teacher forcing (clean_x) runs without a KV cache")
            ct = torch.zeros(B, Fp, device=x.device) if clean_t is None else self._per_frame_t(clean_t, B, Fp, x.device)
            tokens = torch.cat([self._tokens(clean_x), tokens], dim=1)
            t_frames = torch.cat([ct.expand(B, Fp), t_frames.expand(B, Fp)], dim=1)
            rope_frames, mode, k_frames = torch.cat([frames, frames]), "teacher_forcing", frames
        elif kv_cache is not None:
            kv_cache.allocate(S, dtype, x.device)
            if frame_offset > kv_cache.frames:
                raise ValueError(f"KV cache holds frames [0, {kv_cache.frames}); a block at frame "
                                 f"{frame_offset} would skip context")
            rope_frames, mode = frames, "causal"
            k_frames = kv_cache.key_frames(frame_offset, Fp)
        else:
            rope_frames, mode, k_frames = frames, ("causal" if causal else "full"), frames

        mask = self._mask(mode, frames, k_frames, S)
        rope = rope_cos_sin(self.head_dim, rope_frames, Hp, Wp, device=x.device)
        Fm = t_frames.shape[1]
        temb, mod = self.condition_embedder.time(t_frames.reshape(-1), text.dtype)
        temb, mod = temb.unflatten(0, (B, Fm)), mod.unflatten(0, (B, Fm))
        text_kv = self._text_kv(text, kv_cache)

        want = {(i if i >= 0 else len(self.blocks) + i): i for i in return_hidden}
        hidden = {}
        n_out = tokens.shape[1] - Fp  # first token frame of the returned (noisy) part
        h = tokens
        for i, block in enumerate(self.blocks):
            def self_attn(q, k, v, i=i):
                if kv_cache is not None:
                    k, v = kv_cache.keys_values(i, frame_offset, k, v, write_cache)
                return self.attn(q, k, v, mask)

            args = (h, mod, rope, text_kv[i], self_attn, self.attn.full)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
            if i in want:
                hidden[want[i]] = h[:, n_out:].flatten(1, 2)
        if kv_cache is not None and write_cache:
            kv_cache.frames = max(kv_cache.frames, frame_offset + Fp)

        # Output: adaLN with the frame's temb, projection, unpatchify.
        h, temb = h[:, n_out:], (temb[:, n_out:] if Fm > 1 else temb)
        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None]).unbind(2)  # [B, F|1, D]
        h = (self.norm_out(h.float()) * (1 + scale[:, :, None]) + shift[:, :, None]).type_as(h)
        out = self.proj_out(h).reshape(B, Fp, Hp, Wp, pt, ph, pw, self.out_channels)
        v = out.permute(0, 1, 4, 7, 2, 5, 3, 6).reshape(B, F, self.out_channels, H, W)
        return (v, hidden) if return_hidden else v
