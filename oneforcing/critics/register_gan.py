"""`register_gan_critic`: the fake score plus One-Forcing's register-token discriminator head.

The adversarial branch of Aurora-edu/One-Forcing (model/one_forcing.py; docs/fidelity.md): for each selected block (0-indexed; negative
indices count from the end) one learned register token (init N(0, 0.02), RMS-normed) queries
that block's hidden tokens [B, N, dim] in a small attention block (heads, q/k RMS-normed, no
RoPE: the register has no position) with a residual, then an FFN (GELU-tanh) with a residual.
The registers' outputs are concatenated [B, n_reg * dim] -> LayerNorm -> Linear(dim) -> SiLU ->
Linear(1) = the logit [B]. Defaults: layers [21, 29] of the 30-block 1.3B, 12 heads, FFN 2048
(framewise); the chunkwise recipe uses layers [29], ffn_dim 512.

Besides the q/k RMSNorms, as the official GanAttentionBlock (Aurora-edu/One-Forcing
wan/modules/model.py): the block's hidden tokens enter the attention through an AFFINE LayerNorm
(its `norm3`, cross_attn_norm=True) and the register enters the FFN through a non-affine one
(`norm2`); Wan's residual stream grows large in deep blocks and the head must not see its raw
scale. The LayerNorm over the concatenated registers (`_cls_pred_branch`) is affine too. One `denoise`-and-`logit` forward of the backbone serves both
(`denoise_and_logit`).

Parameter names: the backbone's under "model." (as in `fake_score`), the head's under "head."
(`head.registers.{i}.token`, `head.registers.{i}.to_q.weight`, `head.registers.{i}.norm_kv.*`, ...,
`head.out.{0,1,3}.*`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from oneforcing.critics.fake_score import FakeScore
from oneforcing.errors import UserError
from oneforcing.models.wan_io import WAN_DEFAULTS, load_config
from oneforcing.registry import CRITICS


class RegisterAttention(nn.Module):
    """One register token reading one block's hidden states: attention + residual, FFN + residual."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, eps: float = 1e-6, init_std: float = 0.02):
        super().__init__()
        check_heads(heads, dim)
        self.heads = heads
        self.token = nn.Parameter(torch.randn(dim) * init_std)
        self.token_norm = nn.RMSNorm(dim, eps=eps)
        self.norm_kv = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)    # official norm3

        self.to_q, self.to_k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_v, self.to_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=eps), nn.RMSNorm(dim, eps=eps)
        self.norm_ffn = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)  # official norm2
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, N, dim] -> the register's feature [B, dim]."""
        B, N, D = hidden.shape
        dtype = self.to_q.weight.dtype
        r = self.token_norm(self.token.to(dtype)).expand(B, 1, D)
        kv = self.norm_kv(hidden.to(dtype))
        q = self.norm_q(self.to_q(r))
        k, v = self.norm_k(self.to_k(kv)), self.to_v(kv)
        split = lambda z: z.unflatten(-1, (self.heads, D // self.heads)).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))  # [B, heads, 1, hd]
        r = r + self.to_out(a.transpose(1, 2).flatten(2))
        r = r + self.ffn(self.norm_ffn(r))
        return r[:, 0]


class RegisterHead(nn.Module):
    """The registers (one per selected block) and the MLP that turns their features into a logit."""

    def __init__(self, dim: int, num_registers: int, heads: int, ffn_dim: int, eps: float = 1e-6):
        super().__init__()
        self.registers = nn.ModuleList([RegisterAttention(dim, heads, ffn_dim, eps) for _ in range(num_registers)])
        self.out = nn.Sequential(nn.LayerNorm(num_registers * dim, eps=eps), nn.Linear(num_registers * dim, dim),
                                 nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        feats = torch.cat([reg(h) for reg, h in zip(self.registers, hidden)], dim=-1)
        return self.out(feats).squeeze(-1)


DEFAULT_LAYERS = [21, 29]  # of the 30-block 1.3B (framewise One-Forcing)


def selected_blocks(layers: list[int], num_layers: int, base: str | None = None) -> list[int]:
    """`layers` (negative = from the end) as 0-based block indices of a `num_layers`-block base."""
    n, layers = num_layers, list(layers)
    where = f"the {n}-block base '{base}'" if base else f"a {n}-block base"
    if not layers:
        raise UserError("register_gan_critic needs at least one layer", key="layers")
    bad = [i for i in layers if not isinstance(i, int) or not -n <= i < n]
    if bad:
        raise UserError(f"{bad} do not exist in {where} (valid: -{n} .. {n - 1}; the defaults [21, 29] "
                        "fit the 30-block Wan2.1-1.3B)", key="layers")
    blocks = [i % n for i in layers]
    if len(set(blocks)) != len(blocks):
        raise UserError(f"{layers} name the same block twice in {where}", key="layers")
    return blocks


def check_heads(heads: int, dim: int) -> None:
    if not isinstance(heads, int) or heads < 1 or dim % heads:
        raise UserError(f"{heads!r} does not divide the base model's dim {dim}", key="heads")


@CRITICS.register("register_gan_critic")
class RegisterGANCritic(FakeScore):
    """`{type: register_gan_critic, pretrained: DIR, layers: [21, 29], heads: 12, ffn_dim: 2048}`."""

    def __init__(self, pretrained: str | None = None, config: dict | None = None, layers: list[int] | None = None,
                 heads: int = 12, ffn_dim: int = 2048, attention: str = "auto", gradient_checkpointing: bool = False):
        super().__init__(pretrained=pretrained, config=config, attention=attention,
                         gradient_checkpointing=gradient_checkpointing)
        self.layers = selected_blocks(DEFAULT_LAYERS if layers is None else layers, self.num_layers, pretrained)
        check_heads(heads, self.dim)
        self.head = RegisterHead(self.dim, len(self.layers), heads, ffn_dim)

    @staticmethod
    def check_recipe(kwargs: dict, *, path: str, file: str | None) -> None:
        """Called by the registry's strict validation (so by `oneforcing show` and before any model
        is built): the inner Wan's `config:`, then `layers` and `heads` against the base's
        config.json (or `config`)."""
        FakeScore.check_recipe(kwargs, path=path, file=file)
        pretrained = kwargs.get("pretrained")
        if pretrained and not Path(pretrained).exists():
            return  # resolvable without weights (`oneforcing show`); the train job names the missing folder
        base = {**WAN_DEFAULTS, **(load_config(pretrained) if pretrained else {}), **(kwargs.get("config") or {})}
        layers = kwargs.get("layers")
        try:
            selected_blocks(DEFAULT_LAYERS if layers is None else layers, base["num_layers"], pretrained)
            check_heads(kwargs.get("heads", 12), base["num_attention_heads"] * base["attention_head_dim"])
        except UserError as err:
            raise UserError(err.message, file=file, key=f"{path}.{err.key}" if path else err.key) from None

    def _head_input(self, hidden: dict) -> list[torch.Tensor]:
        return [hidden[i] for i in self.layers]

    def denoise_and_logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
        """(v [B, F, C, H, W], logit [B]) from one backbone forward."""
        v, hidden = self.model(x_t, t, text, causal=False, return_hidden=tuple(self.layers))
        return v, self.head(self._head_input(hidden))

    def logit(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The discriminator's real/fake logit [B] for noised latents x_t at t."""
        return self.denoise_and_logit(x_t, t, text)[1]
