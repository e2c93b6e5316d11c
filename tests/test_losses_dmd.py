"""DMD and flow denoise: formulas and gradients on tiny tensors with stub scores, plus one run
through the real self-forcing rollout on tiny CausalWan models."""

import pytest
import torch
import torch.nn as nn

from oneforcing.data import Batch
from oneforcing.jobs.base import RunContext
from oneforcing.losses.dmd import DMDLoss, dmd_gradient, dmd_surrogate
from oneforcing.registry import LOSSES, build
from oneforcing.samplers import Rollout, SelfForcingRollout
from oneforcing.schedulers import FlowMatchScheduler, ShiftedUniformTimesteps
from oneforcing.trainer.step import StepContext

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler

SHAPE = (2, 4, 3, 2, 2)  # B, F, C, H, W
T_FIXED = torch.tensor([300.0, 700.0])


def fixed_t(n, rng=None, device="cpu"):
    return T_FIXED[:n].to(device)


class FixedRollout:
    """A sampler stub: returns the leaf `x` (through a x1 op, so the graph reaches it)."""

    def __init__(self, x, mask):
        self.x, self.mask = x, mask

    def __call__(self, model, noise, text, *, rng=None, exit_rng=None):
        return Rollout(x0=self.x * 1.0, frame_mask=self.mask, with_grad=torch.is_grad_enabled())


class TextScore(nn.Module):
    """v = w x + mean(text) per sample: the conditional and unconditional scores differ."""

    def __init__(self, w):
        super().__init__()
        self.w, self.calls = w, []

    def forward(self, x, t, text, **kw):
        self.calls.append((x.shape[0], torch.is_grad_enabled(), kw))
        return self.w * x + text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


class HalfCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.grad_enabled = []

    def denoise(self, x_t, t, text):
        self.grad_enabled.append(torch.is_grad_enabled())
        return 0.5 * x_t

    forward = denoise


def make_ctx(phase, x, mask, *, critic=None, real=None, seed=0, timesteps=fixed_t, uncond=None):
    text = torch.randn(SHAPE[0], 3, 5, generator=torch.Generator().manual_seed(9)) + 1
    batch = {"latents": torch.zeros(SHAPE), "text": text}
    return StepContext(step=0, phase=phase, batch=Batch(**batch), generator=nn.Identity(), critic=critic,
                       real_score=real, scheduler=FLOW, timesteps=timesteps,
                       sampler=FixedRollout(x, mask), uncond_text=uncond,
                       rng=torch.Generator().manual_seed(seed), ctx=RunContext())


def expected_eps(seed):
    g = torch.Generator().manual_seed(seed)
    torch.randn(SHAPE, generator=g)  # s.rollout's rollout_noise is drawn first
    return torch.randn(SHAPE, generator=g)


def test_dmd_matches_closed_form_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(SHAPE, requires_grad=True)
    mask = torch.tensor([False, True, True, True])
    real, critic = TextScore(0.3), HalfCritic()
    s = make_ctx("generator", x, mask, critic=critic, real=real, seed=3)
    loss, figs = build({"type": "dmd", "cfg_scale": 6.0}, LOSSES)(s)
    loss.backward()

    # closed form (Aurora-edu/One-Forcing model/dmd.py): sigma = t / 1000 for sampled model timesteps
    sig = (T_FIXED / 1000).view(-1, 1, 1, 1, 1)
    eps = expected_eps(3)
    xd = x.detach()
    x_t = (1 - sig) * xd + sig * eps
    text = s.text
    cond = 0.3 * x_t + text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)
    unc = 0.3 * x_t  # no negative prompt given -> zeros
    real_x0 = x_t - sig * (cond + 5.0 * (cond - unc))  # cfg_scale 6 = the papers' "guidance 5" form
    fake_x0 = x_t - sig * 0.5 * x_t
    norm = (xd - real_x0).abs().mean(dim=(1, 2, 3, 4), keepdim=True) + 1e-6
    grad = (fake_x0 - real_x0) / norm
    n = grad[:, mask].numel()
    assert loss.item() == pytest.approx(0.5 * (grad[:, mask] ** 2).mean().item(), rel=1e-5)
    # d loss / d x = grad / N on the masked frames, exactly 0 on the others
    torch.testing.assert_close(x.grad[:, mask], grad[:, mask] / n, rtol=1e-5, atol=1e-9)
    assert torch.all(x.grad[:, ~mask] == 0)
    # both scores without grad; CFG as one batched forward of 2B
    assert critic.grad_enabled == [False]
    assert real.calls == [(2 * SHAPE[0], False, {"causal": False})]  # the teacher runs bidirectionally
    assert figs["t_mean"] == pytest.approx(500.0)
    assert figs["grad_norm"] > 0


def test_dmd_batched_and_separate_cfg_agree_and_cfg_scale_one_skips_uncond():
    x = torch.randn(SHAPE, requires_grad=True)
    mask = torch.ones(4, dtype=torch.bool)
    uncond = torch.randn(1, 3, 5)
    values = []
    for batch_cfg in (True, False):
        s = make_ctx("generator", x, mask, critic=HalfCritic(), real=TextScore(0.2), seed=1, uncond=uncond)
        values.append(DMDLoss(cfg_scale=4.0, batch_cfg=batch_cfg)(s)[0])
    torch.testing.assert_close(values[0], values[1])
    real = TextScore(0.2)
    DMDLoss(cfg_scale=1.0)(make_ctx("generator", x, mask, critic=HalfCritic(), real=real))
    assert [c[0] for c in real.calls] == [SHAPE[0]]  # conditional only


def test_dmd_helpers_nan_to_num_and_surrogate_gradient():
    x = torch.randn(1, 2, 1, 2, 2, requires_grad=True)
    real = x.detach().clone()  # |x - real| = 0 -> 0/eps fine; inf/nan cases are zeroed
    fake = real.clone()
    fake[0, 0, 0, 0, 0] = float("nan")
    g = dmd_gradient(x.detach(), fake, real)
    assert torch.isfinite(g).all() and g[0, 0, 0, 0, 0] == 0
    grad = torch.randn_like(x)
    dmd_surrogate(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / grad.numel())


def test_flow_denoise_formula_on_detached_rollout():
    x = torch.randn(SHAPE, requires_grad=True)
    mask = torch.tensor([False, False, True, True])

    class LinCritic(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor(0.7))

        def denoise(self, x_t, t, text):
            return self.w * x_t

    for masked in (False, True):
        critic = LinCritic()
        s = make_ctx("critic", x, mask, critic=critic, seed=5)
        loss, _ = build({"type": "flow_denoise", "masked": masked}, LOSSES)(s)
        loss.backward()
        sig = (T_FIXED / 1000).view(-1, 1, 1, 1, 1)
        eps = expected_eps(5)
        x_t = (1 - sig) * x.detach() + sig * eps
        err = 0.7 * x_t - (eps - x.detach())
        want = (err[:, mask] ** 2).mean() if masked else (err ** 2).mean()
        assert loss.item() == pytest.approx(want.item(), rel=1e-5)
        assert critic.w.grad is not None and x.grad is None  # the rollout is data for the critic


def test_dmd_through_self_forcing_rollout_on_tiny_models():
    from oneforcing.critics import FakeScore
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    gen = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, attention="sdpa")
    teacher = CausalWan.from_config(TINY_WAN_CONFIG, attention="sdpa").requires_grad_(False)
    critic = FakeScore(config=TINY_WAN_CONFIG, attention="sdpa").requires_grad_(False)
    batch = {"latents": torch.randn(1, 3, 4, 4, 4), "text": torch.randn(1, 5, 24)}
    s = StepContext(step=0, phase="generator", batch=Batch(**batch), generator=gen, critic=critic, real_score=teacher,
                    scheduler=FLOW, timesteps=ShiftedUniformTimesteps(scheduler=FLOW),
                    sampler=SelfForcingRollout(steps=[1000], grad_frames=2, scheduler=FLOW), uncond_text=None,
                    rng=torch.Generator().manual_seed(0), ctx=RunContext())
    loss, figs = DMDLoss()(s)
    assert torch.isfinite(loss) and 20 <= figs["t_mean"] <= 980
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    assert all(p.grad is None for p in critic.parameters())
    assert s.rollout().frame_mask.tolist() == [False, True, True]


def test_dmd_gradient_normaliser_is_clamped_not_offset():
    """Official model/dmd.py: grad / normalizer.clamp_min(eps), not / (normalizer + eps)."""
    x = torch.zeros(2, 1, 1, 1, 4)
    real = x.clone()
    real[0] += 0.5                     # normaliser 0.5: unchanged by the clamp
    real[1] += 1e-8                    # normaliser 1e-8: clamped to 1e-6
    fake = real + 1.0
    g = dmd_gradient(x, fake, real, eps=1e-6)
    torch.testing.assert_close(g[0], torch.full_like(g[0], 2.0))
    torch.testing.assert_close(g[1], torch.full_like(g[1], 1e6))
