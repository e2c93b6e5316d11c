"""CausalWan: diffusers equivalence, weight IO, block-causal / streaming / teacher-forcing semantics."""

import json

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.models.causal_wan import CausalWan
from oneforcing.registry import MODELS, build
from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG, random_diffusers_wan, tiny_inputs

TOL = 1e-5


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_wan")
    random_diffusers_wan(seed=0).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def ref(wan_dir):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(str(wan_dir)).eval()


def diffusers_v(ref, x, t, text):
    return ref(x.permute(0, 2, 1, 3, 4), t, text, return_dict=False)[0].permute(0, 2, 1, 3, 4)


def load(wan_dir, **kw):
    kw.setdefault("attention", "sdpa")
    return CausalWan.from_pretrained(wan_dir, **kw).eval()


@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 5, 8, 4), (1, 1, 2, 2)])
@torch.no_grad()
def test_bidirectional_matches_diffusers(wan_dir, ref, shape):
    B, F, H, W = shape
    x, text = tiny_inputs(B, F, H, W, text_len=5, seed=F)
    t = torch.linspace(20, 980, B)
    model = load(wan_dir, causal=False)
    assert (model(x, t, text) - diffusers_v(ref, x, t, text)).abs().max() <= TOL


@torch.no_grad()
def test_per_frame_timesteps_match_diffusers_per_token(wan_dir, ref):
    # diffusers takes per-token timesteps [B, N] (Wan2.2 path); ours per frame [B, F].
    x, text = tiny_inputs(2, 3, 4, 6)
    t = torch.tensor([[1000.0, 500.0, 0.0], [250.0, 750.0, 999.0]])
    S = (4 // 2) * (6 // 2)
    v_ref = diffusers_v(ref, x, t.repeat_interleave(S, dim=1), text)
    assert (load(wan_dir, causal=False)(x, t, text) - v_ref).abs().max() <= TOL


@torch.no_grad()
def test_save_pretrained_roundtrip_and_sharded(wan_dir, ref, tmp_path):
    from diffusers import WanTransformer3DModel

    model = load(wan_dir, causal=False)
    model.save_pretrained(tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["_class_name"] == "WanTransformer3DModel" and cfg["num_layers"] == 2
    back = WanTransformer3DModel.from_pretrained(str(tmp_path / "ours")).eval()
    x, text = tiny_inputs(1, 2, 4, 4)
    t = torch.tensor([300.0])
    assert (diffusers_v(back, x, t, text) - model(x, t, text)).abs().max() == 0
    ref.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    assert (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").exists()
    sharded = load(tmp_path / "sharded", causal=False)
    assert (sharded(x, t, text) - model(x, t, text)).abs().max() == 0


def test_registered_build_and_user_errors(wan_dir, tmp_path):
    from oneforcing.models.weights import load_pretrained

    m = build({"type": "causal_wan", "pretrained": str(wan_dir), "attention": "sdpa", "frames_per_block": 3},
              MODELS)
    assert m.weights_folder == str(wan_dir) and m.frames_per_block == 3
    ref_sd = CausalWan.from_pretrained(wan_dir).state_dict()
    assert not all(torch.equal(v, ref_sd[k]) for k, v in m.state_dict().items())  # built, not loaded
    x, t, text = torch.randn(1, 3, 4, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 24)
    with pytest.raises(UserError, match="names the weights folder .* but they were never loaded"):
        m(x, t, text)  # random weights never produce output
    assert load_pretrained(m) == len(ref_sd)
    assert m(x, t, text).shape == x.shape
    assert all(torch.equal(v, ref_sd[k]) for k, v in m.state_dict().items())
    with pytest.raises(UserError, match="not found"):
        CausalWan(pretrained=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="pretrained"):
        CausalWan()
    with pytest.raises(UserError):
        CausalWan(config=TINY_WAN_CONFIG, attention="flash")  # no CUDA here
    with pytest.raises(UserError, match="did you mean"):
        CausalWan(config=TINY_WAN_CONFIG, attention="sdpaa")


@pytest.mark.parametrize("fpb", [1, 3])
@torch.no_grad()
def test_block_causal_visibility(wan_dir, fpb):
    model = load(wan_dir, frames_per_block=fpb)
    x, text = tiny_inputs(1, 6, 4, 4)
    t = torch.tensor([700.0])
    v = model(x, t, text)
    x2 = x.clone()
    x2[:, 4] += 1.0  # a frame of the second block (fpb 3) / of block 4 (fpb 1)
    v2 = model(x2, t, text)
    changed = (v2 - v).abs().amax(dim=(0, 2, 3, 4)) > 1e-6
    first = 4 - 4 % fpb  # first frame of the perturbed frame's block
    assert not changed[:first].any() and changed[first:].all()


@pytest.mark.parametrize("fpb", [1, 3])
@torch.no_grad()
def test_streaming_equals_block_causal(wan_dir, fpb):
    model = load(wan_dir, frames_per_block=fpb)
    x, text = tiny_inputs(2, 6, 4, 6, seed=3)
    t = torch.tensor([[900.0, 600.0, 300.0, 0.0, 500.0, 100.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]])
    v_full, h_full = model(x, t, text, return_hidden=(0, -1))
    cache = model.new_kv_cache(2, 6)
    for a, b in model.block_ranges(6):
        # a no-write call first (a denoising step): it must not disturb the cached context
        model(torch.randn_like(x[:, a:b]), t[:, a:b], text, kv_cache=cache, frame_offset=a)
        v, h = model(x[:, a:b], t[:, a:b], text, kv_cache=cache, frame_offset=a, write_cache=True,
                     return_hidden=(0, -1))
        assert (v - v_full[:, a:b]).abs().max() <= TOL
        S = 2 * 3
        assert (h[-1] - h_full[-1][:, a * S:b * S]).abs().max() <= TOL
    assert cache.frames == 6 and cache.cross is not None
    assert cache.nbytes == 2 * 2 * 6 * S * model.dim * 4 * 2  # 2 x layers x frames x tokens x dim x bytes x B
    # a whole multi-block chunk in one streaming call is block-causal inside
    cache2 = model.new_kv_cache(2, 6)
    model(x[:, :fpb], t[:, :fpb], text, kv_cache=cache2, write_cache=True)
    v_rest = model(x[:, fpb:], t[:, fpb:], text, kv_cache=cache2, frame_offset=fpb)
    assert (v_rest - v_full[:, fpb:]).abs().max() <= TOL


@torch.no_grad()
def test_streaming_refuses_gaps(wan_dir):
    model = load(wan_dir)
    x, text = tiny_inputs(1, 1, 4, 4)
    cache = model.new_kv_cache(1, 4)
    with pytest.raises(ValueError, match="skip context"):
        model(x, torch.tensor([0.0]), text, kv_cache=cache, frame_offset=2)


@pytest.mark.parametrize("fpb", [1, 2])
@torch.no_grad()
def test_teacher_forcing_mask(wan_dir, fpb):
    model = load(wan_dir, frames_per_block=fpb)
    clean, text = tiny_inputs(1, 4, 4, 4, seed=1)
    noisy = torch.randn_like(clean)
    t = torch.tensor([800.0])
    v = model(noisy, t, text, clean_x=clean)
    assert v.shape == noisy.shape

    def changed_after(clean2=clean, noisy2=noisy):
        d = (model(noisy2, t, text, clean_x=clean2) - v).abs().amax(dim=(0, 2, 3, 4))
        return d > 1e-6

    c2 = clean.clone()
    c2[:, 2] += 1.0  # clean frame 2 (block 2 // fpb) is context only for later blocks
    blk = 2 // fpb
    expect = torch.tensor([f // fpb > blk for f in range(4)])
    assert torch.equal(changed_after(clean2=c2), expect)
    n2 = noisy.clone()
    n2[:, 2] += 1.0  # a noisy frame is seen by its own block only
    assert torch.equal(changed_after(noisy2=n2), torch.tensor([f // fpb == blk for f in range(4)]))
    # noisy block i sees exactly clean blocks < i and itself: equal to a streaming call whose
    # cache holds the clean frames at t=0
    cache = model.new_kv_cache(1, 4)
    for a, b in model.block_ranges(4):
        vs = model(noisy[:, a:b], t, text, kv_cache=cache, frame_offset=a)
        assert (vs - v[:, a:b]).abs().max() <= TOL
        model(clean[:, a:b], torch.zeros(1), text, kv_cache=cache, frame_offset=a, write_cache=True)


def test_return_hidden_and_gradient_checkpointing(wan_dir):
    x, text = tiny_inputs(1, 2, 4, 4)
    t = torch.tensor([500.0])
    grads = []
    for ckpt in (False, True):
        model = load(wan_dir, gradient_checkpointing=ckpt)
        v, hid = model(x, t, text, return_hidden=(1, 0))
        assert set(hid) == {0, 1} and hid[0].shape == (1, 2 * 2 * 2, model.dim)
        (v.square().mean() + hid[0].mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (grads[0] - grads[1]).abs().max() <= 1e-6


def test_from_config_random_init_and_two_models_coexist():
    a = CausalWan.from_config(TINY_WAN_CONFIG, attention="sdpa", causal=False)
    b = CausalWan.from_config(TINY_WAN_CONFIG, attention="flex", causal=False)
    b.load_state_dict(a.state_dict())
    x, text = tiny_inputs(1, 2, 4, 4)
    with torch.no_grad():
        va, vb = a(x, torch.tensor([100.0]), text), b(x, torch.tensor([100.0]), text, causal=True)
        va2 = a(x, torch.tensor([100.0]), text)
    assert type(a.attn).__name__ == "SDPAAttention" and type(b.attn).__name__ == "FlexAttention"
    assert torch.equal(va, va2) and va.shape == vb.shape


@torch.no_grad()
def test_no_absolute_position_within_a_frame(wan_dir):
    """The Wan patch embedding and 3-D RoPE give a token only relative offsets: where every token of a
    frame carries the same content, every token gets the same output. So from pure noise a Wan-shaped
    generator can place an object only where the noise breaks the symmetry, never where a prompt
    alone fixes it (the toy world's motion-dependent starts: docs/toy_world.md, issue 19). Exact for
    a first frame, which attends only to itself; later frames mix earlier frames in proportions that
    differ near the border, a weak leak."""
    model = load(wan_dir)
    _, text = tiny_inputs(1, 1, 4, 4)
    token = torch.randn(1, 1, TINY_WAN_CONFIG["in_channels"], 2, 2)        # one (1, 2, 2) patch
    x = token.repeat(1, 1, 1, 3, 4)                                         # a frame of 3 x 4 identical tokens
    v = model(x, torch.tensor([1000.0]), text, causal=True)
    patches = v.unfold(3, 2, 2).unfold(4, 2, 2)                             # [B, F, C, 3, 4, 2, 2]
    spread = (patches - patches[:, :, :, :1, :1]).abs().amax().item()
    assert spread < 1e-5 * v.abs().amax().item()
    x[:, :, :, :2, :2] += 1.0                                               # one distinct token breaks it
    v = model(x, torch.tensor([1000.0]), text, causal=True)
    patches = v.unfold(3, 2, 2).unfold(4, 2, 2)
    assert (patches - patches[:, :, :, :1, :1]).abs().amax().item() > 1e-3


@torch.no_grad()
def test_absolute_position_grid_option(wan_dir, tmp_path):
    """The toy models' `absolute_position_grid`: zero at init (the same function as Wan), and once it is
    not zero a frame of identical tokens gets position-dependent outputs, which plain Wan cannot give
    (the test above). It round-trips through save_pretrained and refuses another frame size."""
    plain = load(wan_dir)
    grid = CausalWan.from_config({**plain.config, "absolute_position_grid": [3, 4]}, attention="sdpa")
    grid.load_state_dict({**plain.state_dict(), "absolute_position": torch.zeros_like(grid.absolute_position)})
    grid.eval()
    _, text = tiny_inputs(1, 1, 4, 4)
    x = torch.randn(1, 1, TINY_WAN_CONFIG["in_channels"], 2, 2).repeat(1, 1, 1, 3, 4)
    t = torch.tensor([1000.0])
    assert torch.allclose(grid(x, t, text, causal=True), plain(x, t, text, causal=True), atol=TOL)
    grid.absolute_position.normal_()
    patches = grid(x, t, text, causal=True).unfold(3, 2, 2).unfold(4, 2, 2)
    assert (patches - patches[:, :, :, :1, :1]).abs().amax().item() > 1e-3
    grid.save_pretrained(tmp_path / "g")
    again = CausalWan.from_pretrained(tmp_path / "g", attention="sdpa").eval()
    assert again.config["absolute_position_grid"] == [3, 4]
    assert torch.allclose(again(x, t, text, causal=True), grid(x, t, text, causal=True), atol=TOL)
    with pytest.raises(UserError, match="absolute_position_grid is \\[3, 4\\]"):
        grid(x[..., :4, :4], t, text, causal=True)
    with pytest.raises(UserError, match="absolute_position_grid"):
        CausalWan(config={**TINY_WAN_CONFIG, "absolute_position_grid": [3]})


@torch.no_grad()
def test_absolute_positions_over_a_pretrained_base(wan_dir):
    """`config: {absolute_position_grid: ...}` over a pretrained Wan folder (which has no such tensor):
    it loads, the positions start at zero, and the model is the base's function until trained. Any
    other missing tensor is still an error."""
    from oneforcing.models.weights import checked_state_dict, load_pretrained

    plain = load(wan_dir)
    grid = CausalWan(pretrained=str(wan_dir), config={"absolute_position_grid": [3, 4]}, attention="sdpa")
    load_pretrained(grid)
    assert torch.equal(grid.absolute_position, torch.zeros_like(grid.absolute_position))
    x, text = tiny_inputs(1, 2, 6, 8)
    t = torch.tensor([700.0])
    assert torch.allclose(grid.eval()(x, t, text, causal=True), plain(x, t, text, causal=True), atol=TOL)
    wider = CausalWan(pretrained=str(wan_dir), config={"num_layers": TINY_WAN_CONFIG["num_layers"] + 1})
    with pytest.raises(UserError, match="missing"):
        checked_state_dict(wider, wan_dir)
