"""Attention backends (flash, sdpa, flex), their structured masks, and `resolve_attention`."""

from oneforcing.attention.base import AttentionBackend
from oneforcing.attention.flash import FlashAttention
from oneforcing.attention.flex import FlexAttention
from oneforcing.attention.masks import FrameMask
from oneforcing.attention.resolve import resolve_attention
from oneforcing.attention.sdpa import SDPAAttention

__all__ = ["AttentionBackend", "FlashAttention", "FlexAttention", "FrameMask", "SDPAAttention",
           "resolve_attention"]
