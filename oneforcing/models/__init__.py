"""Networks: CausalWan (diffusers-weight-compatible Wan2.1 DiT), text encoder, VAE, critics."""

from oneforcing.models.causal_wan import CausalWan
from oneforcing.models.text_encoder import WAN_NEGATIVE_PROMPT, UMT5TextEncoder
from oneforcing.models.wan_cache import WanKVCache
from oneforcing.models.wan_vae import WanVAE

__all__ = ["CausalWan", "UMT5TextEncoder", "WAN_NEGATIVE_PROMPT", "WanKVCache", "WanVAE"]
