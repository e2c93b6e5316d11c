"""Critics on a tiny CausalWan: fake_score denoise, register-token discriminator logits and grads."""

import pytest
import torch

from oneforcing.critics import FakeScore, RegisterGANCritic
from oneforcing.errors import RecipeError, UserError
from oneforcing.models import CausalWan
from oneforcing.registry import CRITICS, build
from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG, tiny_inputs


def tiny_critic(**kw):
    torch.manual_seed(0)
    cfg = {"type": "register_gan_critic", "config": TINY_WAN_CONFIG, "layers": [0, 1], "heads": 2,
           "ffn_dim": 24, "attention": "sdpa", **kw}
    return build(cfg, CRITICS)


def test_fake_score_is_the_bidirectional_wan_under_a_model_prefix():
    torch.manual_seed(0)
    critic = build({"type": "fake_score", "config": TINY_WAN_CONFIG, "attention": "sdpa"}, CRITICS)
    wan = CausalWan.from_config(TINY_WAN_CONFIG, causal=False, attention="sdpa")
    wan.load_state_dict(critic.model.state_dict())
    assert set(critic.state_dict()) == {f"model.{k}" for k in wan.state_dict()}
    x, text = tiny_inputs(2, 3, 4, 4)
    t = torch.tensor([100.0, 800.0])
    with torch.no_grad():
        v = critic.denoise(x, t, text)
        torch.testing.assert_close(v, wan(x, t, text))
        torch.testing.assert_close(critic(x, t, text), v)
    assert v.shape == x.shape


def test_register_critic_logit_shape_denoise_and_parameter_names():
    critic = tiny_critic()
    x, text = tiny_inputs(3, 2, 4, 4)
    t = torch.tensor([50.0, 500.0, 950.0])
    with torch.no_grad():
        v, logit = critic.denoise_and_logit(x, t, text)
        torch.testing.assert_close(v, critic.denoise(x, t, text))
        torch.testing.assert_close(logit, critic.logit(x, t, text))
    assert logit.shape == (3,) and torch.isfinite(logit).all()
    names = set(dict(critic.named_parameters()))
    assert {"head.registers.0.token", "head.registers.1.token", "head.out.1.weight", "head.out.3.weight"} <= names
    assert all(n.startswith(("model.", "head.")) for n in names)
    assert critic.head.registers[0].token.std() < 0.1  # N(0, 0.02) init
    # per-sample: the logit of a sample does not depend on the other samples of the batch
    with torch.no_grad():
        torch.testing.assert_close(critic.logit(x[:1], t[:1], text[:1]), logit[:1], rtol=1e-4, atol=1e-5)


def test_register_critic_gradients_reach_registers_backbone_and_inputs():
    critic = tiny_critic()
    x, text = tiny_inputs(2, 2, 4, 4, seed=1)
    x.requires_grad_(True)
    critic.logit(x, torch.tensor([300.0, 600.0]), text).sum().backward()
    for reg in critic.head.registers:
        assert reg.token.grad is not None and reg.token.grad.abs().sum() > 0
    assert critic.model.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    # frozen (generator phase): gradient still reaches the input, none to the parameters
    critic.zero_grad(set_to_none=True)
    critic.requires_grad_(False)
    x2 = x.detach().clone().requires_grad_(True)
    critic.logit(x2, torch.tensor([300.0, 600.0]), text).sum().backward()
    assert x2.grad.abs().sum() > 0 and all(p.grad is None for p in critic.parameters())


def test_register_critic_layers_negative_and_invalid():
    critic = tiny_critic(layers=[-1], ffn_dim=8)
    assert critic.layers == [1] and len(critic.head.registers) == 1
    with pytest.raises(UserError, match=r"\[2\] do not exist in a 2-block base"):
        tiny_critic(layers=[2])
    with pytest.raises(UserError, match="same block"):
        tiny_critic(layers=[1, -1])
    with pytest.raises(RecipeError, match="did you mean 'layers'"):
        tiny_critic(layer=[0])


def test_critic_classes_exposed():
    assert CRITICS.get("fake_score") is FakeScore and CRITICS.get("register_gan_critic") is RegisterGANCritic
    assert issubclass(RegisterGANCritic, FakeScore)


def test_register_head_layer_norms_as_the_official_gan_block():
    """GanAttentionBlock: norm3 over the block's tokens is affine, norm2 before the FFN is not;
    the LayerNorm over the concatenated registers is affine."""
    from oneforcing.critics.register_gan import RegisterHead

    head = RegisterHead(dim=16, num_registers=2, heads=2, ffn_dim=32)
    for reg in head.registers:
        assert reg.norm_kv.elementwise_affine and reg.norm_kv.weight.shape == (16,)
        assert not reg.norm_ffn.elementwise_affine
    assert head.out[0].elementwise_affine and head.out[0].weight.shape == (32,)
    names = dict(head.named_parameters())
    assert "registers.0.norm_kv.weight" in names and "registers.1.norm_kv.bias" in names
