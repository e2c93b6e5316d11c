"""The Wan2.1 video VAE (diffusers' AutoencoderKLWan) behind the library's codec interface.

Interface shared with the toy codec (both registered in VAES):
    encode(video [B, T, 3, H, W] in [-1, 1]) -> latents [B, F, C, h, w], normalised
    decode(latents [B, F, C, h, w])          -> video [B, T, 3, H, W] in [-1, 1]
    latent_channels, temporal_factor, spatial_factor, num_latent_frames(T), num_video_frames(F)

Layouts: the library keeps frames before channels ([B, F, C, H, W], as the causal model reads
them); diffusers' VAE wants [B, C, T, H, W]. The permutes live here and nowhere else.

Normalisation is WanPipeline's: z_norm = (z - latents_mean) / latents_std per channel, with
mean/std read from the VAE's own config. The Wan transformer was trained on z_norm.

Temporal structure: the causal 3-D VAE encodes the first frame alone and then groups of
`temporal_factor` frames, so T = 1 + 4k frames <-> F = 1 + k latents (81 <-> 21). Decoding is
causal too: `stream_decoder()` decodes latents block by block as a streaming generator makes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from oneforcing.errors import UserError
from oneforcing.models.text_encoder import parse_dtype
from oneforcing.registry import VAES


def resolve_vae_dir(path: str) -> Path:
    """A Wan diffusers root (with vae/) or the vae directory itself."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"VAE directory not found: {root}")
    if (root / "vae" / "config.json").is_file():
        return root / "vae"
    if (root / "config.json").is_file():
        return root
    raise UserError(f"no VAE config.json in {root} or {root / 'vae'} (expected an AutoencoderKLWan saved by diffusers)")


@VAES.register("wan_vae")
class WanVAE(nn.Module):
    """Frozen Wan VAE. Encoding is deterministic: it returns the mode (= mean) of the latent
    Gaussian, not a sample, so the same video always gives the same latents (data shards,
    ODE pairs and tests are reproducible; the std of Wan's posterior is tiny anyway).

    `batch_slicing` encodes/decodes one video at a time (peak memory of B = 1); `tiling` turns
    on diffusers' spatial tiling for large frames.
    """

    def __init__(self, path: str, dtype: str = "float32", device: str | None = None,
                 batch_slicing: bool = True, tiling: bool = False):
        super().__init__()
        from diffusers import AutoencoderKLWan

        vae_dir = resolve_vae_dir(path)
        self.vae = AutoencoderKLWan.from_pretrained(str(vae_dir), torch_dtype=parse_dtype(dtype), use_safetensors=True)
        self.vae.requires_grad_(False)
        self.vae.eval()
        if device is not None:
            self.vae.to(device)
        if tiling:
            self.vae.enable_tiling()
        self.batch_slicing = bool(batch_slicing)

        cfg = self.vae.config
        self.latent_channels = int(cfg.z_dim)
        self.temporal_factor = int(getattr(cfg, "scale_factor_temporal", None) or 2 ** sum(cfg.temperal_downsample))
        spatial = getattr(cfg, "scale_factor_spatial", None) or 2 ** len(cfg.temperal_downsample)
        self.spatial_factor = int(spatial)
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32)
        std = torch.tensor(cfg.latents_std, dtype=torch.float32)
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise UserError(f"{vae_dir}: latents_mean/latents_std have {mean.numel()}/{std.numel()} "
                            f"entries, expected z_dim = {self.latent_channels}")
        # Buffers shaped [1, 1, C, 1, 1] for [B, F, C, H, W]; not persistent: they come from config.
        self.register_buffer("latents_mean", mean.view(1, 1, -1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, 1, -1, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "WanVAE":
        return super().train(False)  # frozen: never switch to training behaviour

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # --- frame bookkeeping ----------------------------------------------------------------
    def num_latent_frames(self, num_frames: int) -> int:
        """Latent frames for T video frames (T must be 1 + temporal_factor * k): 81 -> 21."""
        k = self.temporal_factor
        if num_frames < 1 or (num_frames - 1) % k:
            raise ValueError(f"the Wan VAE needs 1 + {k}k video frames, got {num_frames}")
        return (num_frames - 1) // k + 1

    def num_video_frames(self, num_latent_frames: int) -> int:
        """Video frames decoded from F latent frames: 21 -> 81."""
        if num_latent_frames < 1:
            raise ValueError(f"need at least one latent frame, got {num_latent_frames}")
        return (num_latent_frames - 1) * self.temporal_factor + 1

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(F, C, h, w) of the latents of a [frames, 3, height, width] video."""
        s = self.spatial_factor
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width} is not a multiple of {s}")
        return (self.num_latent_frames(frames), self.latent_channels, height // s, width // s)

    # --- normalisation --------------------------------------------------------------------
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latents_mean.to(z)) / self.latents_std.to(z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latents_std.to(z) + self.latents_mean.to(z)

    # --- codec ----------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(1)) if self.batch_slicing else [x]

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> normalised latents [B, F, C, H/8, W/8], float32."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"expected video [B, T, 3, H, W], got {tuple(video.shape)}")
        self.num_latent_frames(video.shape[1])  # validates T = 1 + 4k
        s = self.spatial_factor
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(f"frame size {tuple(video.shape[-2:])} is not a multiple of {s}")
        outs = []
        for part in self._split(video):
            x = part.to(self.device, self.dtype).permute(0, 2, 1, 3, 4)  # -> [B, 3, T, H, W]
            z = self.vae.encode(x).latent_dist.mode()                   # deterministic: the mean
            outs.append(z.permute(0, 2, 1, 3, 4).float())                # -> [B, F, C, h, w]
        return self.normalize(torch.cat(outs))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, C, h, w] -> video [B, 4(F-1)+1, 3, 8h, 8w] in [-1, 1], float32."""
        if latents.dim() != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(f"expected latents [B, F, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        outs = []
        for part in self._split(latents):
            z = self.denormalize(part.float()).to(self.device, self.dtype).permute(0, 2, 1, 3, 4)
            x = self.vae.decode(z).sample                                 # clamped to [-1, 1] by diffusers
            outs.append(x.permute(0, 2, 1, 3, 4).float())
        return torch.cat(outs)

    def stream_decoder(self) -> "WanStreamDecoder":
        """A decoder for latents that arrive block by block (see WanStreamDecoder)."""
        return WanStreamDecoder(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode(video)


class WanStreamDecoder:
    """Decode a clip's latents as they are generated, block by block, equal to `decode` of the
    whole clip: `dec(latents[:, a:b])` returns the video frames of latent frames [a, b) (the first
    latent frame gives 1 frame, every later one `temporal_factor` frames), so the first frames reach
    the viewer before the last latents exist.

    The Wan decoder is causal in time. diffusers' `_decode` already runs it one latent frame at a
    time, carrying each causal conv's last input frames in a feature cache (`feat_cache`); here
    that cache lives in this object (one per video with batch slicing) instead of being rebuilt
    per call, so a call continues where the previous one stopped. One object per clip.
    """

    def __init__(self, vae: WanVAE):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        raw = vae.vae
        if getattr(raw, "use_tiling", False):
            raise ValueError("streaming decode does not support the VAE's spatial tiling (tiling: true)")
        if getattr(raw.config, "patch_size", None) is not None:
            raise ValueError("streaming decode supports Wan2.1's VAE (no patch_size)")
        self.vae = vae
        self.num_convs = sum(isinstance(m, WanCausalConv3d) for m in raw.decoder.modules())
        self.caches: list[list] | None = None
        self.frames = 0  # latent frames decoded so far

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, f, C, h, w] (the next f frames) -> video [B, T, 3, 8h, 8w] in [-1, 1]."""
        vae, raw = self.vae, self.vae.vae
        if latents.dim() != 5 or latents.shape[2] != vae.latent_channels:
            raise ValueError(f"expected latents [B, f, {vae.latent_channels}, h, w], got {tuple(latents.shape)}")
        parts = vae._split(latents)
        if self.caches is None:
            self.caches = [[None] * self.num_convs for _ in parts]
        if len(parts) != len(self.caches):
            raise ValueError("a streaming decoder decodes one batch of videos: the batch size changed")
        outs = []
        for part, cache in zip(parts, self.caches):
            z = vae.denormalize(part.float()).to(vae.device, vae.dtype).permute(0, 2, 1, 3, 4)
            x = raw.post_quant_conv(z)  # 1x1x1: no temporal context
            frames = []
            for i in range(x.shape[2]):
                frames.append(raw.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0],
                                          first_chunk=self.frames + i == 0))
            outs.append(torch.cat(frames, dim=2).clamp(-1, 1).permute(0, 2, 1, 3, 4).float())
        self.frames += latents.shape[1]
        return torch.cat(outs)
