"""Attention backends: masks, sdpa dense vs grouped, flex vs sdpa, flash (CUDA only), resolution."""

import logging

import pytest
import torch

from oneforcing.attention import FlexAttention, FrameMask, SDPAAttention, resolve_attention
from oneforcing.errors import UserError


def qkv(nq, nk, B=2, H=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, nq, H, D, generator=g), torch.randn(B, nk, H, D, generator=g),
            torch.randn(B, nk, H, D, generator=g))


def test_frame_mask_rules():
    f = torch.arange(4)
    m = FrameMask.block_causal(f, f, frames_per_block=2, tokens_per_frame=1).dense()
    assert torch.equal(m, torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]).bool())
    tf = FrameMask.teacher_forcing(torch.arange(3), 1, 1).dense().int()
    # rows/cols: clean 0..2 then noisy 0..2
    expect = torch.tensor([
        [1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],  # clean: block-causal
        [0, 0, 0, 1, 0, 0], [1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1],  # noisy i: clean < i and itself
    ])
    assert torch.equal(tf, expect)
    # a cached prefix + a one-block chunk: everything visible
    assert FrameMask.block_causal(torch.tensor([3]), torch.arange(4), 1, 5).is_full()


@pytest.mark.parametrize("kind", ["causal", "teacher"])
def test_sdpa_grouped_equals_dense_and_flex(kind):
    S = 5
    if kind == "causal":
        mask = FrameMask.block_causal(torch.arange(6), torch.arange(6), 2, S)
    else:
        mask = FrameMask.teacher_forcing(torch.arange(4), 1, S)
    n = mask.q_block.numel()
    q, k, v = qkv(n, n)
    dense = SDPAAttention()(q, k, v, mask)
    grouped = SDPAAttention(dense_mask_limit=0)(q, k, v, mask)
    flex = FlexAttention()(q, k, v, mask)
    assert (dense - grouped).abs().max() < 1e-5
    assert (dense - flex).abs().max() < 1e-5
    ref = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask.dense()).transpose(1, 2)
    assert (dense - ref).abs().max() == 0


def test_flex_partial_mask_matches_sdpa():
    # queries of frames 2, 3 over frames 0..3 (a cached prefix + a two-block chunk)
    mask = FrameMask.block_causal(torch.tensor([2, 3]), torch.arange(4), 1, 5)
    assert not mask.is_full()
    q, k, v = qkv(10, 20)
    assert (SDPAAttention()(q, k, v, mask) - FlexAttention()(q, k, v, mask)).abs().max() < 1e-5
    assert (SDPAAttention()(q, k, v) - FlexAttention()(q, k, v)).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flex_attention has no backward on CPU")
def test_flex_gradients_match_sdpa_on_cuda():
    mask = FrameMask.teacher_forcing(torch.arange(3), 1, 40)
    q, k, v = (t.cuda().requires_grad_(True) for t in qkv(240, 240, D=64))
    outs = []
    for backend in (SDPAAttention(), FlexAttention()):
        o = backend(q, k, v, mask)
        outs.append((o, torch.autograd.grad(o.square().sum(), (q, k, v))))
    assert (outs[0][0] - outs[1][0]).abs().max() < 1e-4
    for a, b in zip(outs[0][1], outs[1][1]):
        assert (a - b).abs().max() < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs a CUDA device (none here)")
def test_flash_matches_sdpa_on_cuda():
    pytest.importorskip("flash_attn", reason="flash-attn not installed")
    from oneforcing.attention import FlashAttention

    q, k, v = (t.cuda().bfloat16() for t in qkv(30, 50, D=64))
    mask = FrameMask.block_causal(torch.arange(4, 10), torch.arange(10), 2, 5)
    ref = SDPAAttention(dense_mask_limit=0)(q.float(), k.float(), v.float(), mask)
    assert (FlashAttention()(q, k, v, mask).float() - ref).abs().max() < 2e-2
    assert (FlashAttention()(q, k, v).float() - SDPAAttention()(q.float(), k.float(), v.float())).abs().max() < 2e-2


def test_resolve_attention_logs_once_and_errors(caplog):
    with caplog.at_level(logging.INFO, logger="oneforcing"):
        b = resolve_attention("auto", "cpu")
    assert isinstance(b, SDPAAttention)
    lines = [r.getMessage() for r in caplog.records if r.name == "oneforcing"]
    assert len(lines) == 1 and "sdpa" in lines[0] and "auto" in lines[0]
    with pytest.raises(UserError, match="flash"):
        resolve_attention("flash", "cpu")
    with pytest.raises(UserError, match="did you mean"):
        resolve_attention("flx", "cpu")
    assert isinstance(resolve_attention("flex", "cpu"), FlexAttention)
