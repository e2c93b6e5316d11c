"""GAN generator/discriminator losses and the real sources, with stub discriminators."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from oneforcing.errors import UserError
from oneforcing.data import Batch
from oneforcing.jobs.base import RunContext
from oneforcing.losses.gan import GANDiscriminatorLoss, GANGeneratorLoss, fd_penalty
from oneforcing.losses.real_sources import StudentRolloutReal
from oneforcing.registry import LOSSES, build
from oneforcing.samplers import Rollout, SelfForcingRollout
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.trainer.step import StepContext

FLOW = FlowMatchScheduler()  # the recipe's convention (shift 5), handed to every sampler

SHAPE = (2, 3, 2, 2, 2)
T_FIXED = torch.tensor([250.0, 800.0])


def fixed_t(n, rng=None, device="cpu"):
    return T_FIXED[:n].to(device)


class FixedRollout:
    def __init__(self, x):
        self.x = x

    def __call__(self, model, noise, text, *, rng=None, exit_rng=None):
        return Rollout(x0=self.x * 1.0, frame_mask=torch.ones(self.x.shape[1], dtype=torch.bool))


class LinearD(nn.Module):
    """logit = <w, x_t> + b per sample; records its inputs."""

    def __init__(self, seed=0, const=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.zeros(SHAPE[1:]) if const else torch.randn(SHAPE[1:], generator=g))
        self.b = nn.Parameter(torch.tensor(0.3))
        self.inputs = []

    def denoise(self, x_t, t, text):
        return x_t

    def logit(self, x_t, t, text):
        self.inputs.append((x_t.detach(), t.detach(), text.shape[0]))
        return (x_t * self.w).flatten(1).sum(1) + self.b


def make_ctx(phase, fake, real, critic, seed=0):
    batch = {"latents": real, "text": torch.randn(SHAPE[0], 3, 4)}
    return StepContext(step=0, phase=phase, batch=Batch(**batch), generator=nn.Identity(), critic=critic, real_score=None,
                       scheduler=FLOW, timesteps=fixed_t, sampler=FixedRollout(fake),
                       uncond_text=None, rng=torch.Generator().manual_seed(seed), ctx=RunContext())


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, requires_grad=True), torch.randn(SHAPE, generator=g) + 2.0


def test_discriminator_same_t_same_noise_one_batch_and_formula():
    fake, real = data()
    D = LinearD()
    loss_fn = build({"type": "gan_discriminator", "real": {"type": "dataset"}}, LOSSES)
    loss, figs = loss_fn(make_ctx("critic", fake, real, D))
    (x_in, t_in, n_text), = D.inputs  # one critic forward
    B = SHAPE[0]
    assert x_in.shape[0] == 2 * B and n_text == 2 * B
    torch.testing.assert_close(t_in[:B], t_in[B:])
    sig = (T_FIXED / 1000).view(-1, 1, 1, 1, 1)
    # same t and eps: real_t - fake_t = (1 - sigma) (real - fake) exactly
    torch.testing.assert_close(x_in[:B] - x_in[B:], (1 - sig) * (real - fake.detach()), rtol=1e-5, atol=1e-5)
    l = (x_in * D.w).flatten(1).sum(1) + D.b
    l_r, l_f = l[:B], l[B:]
    want = F.softplus(-l_r).mean() + F.softplus(l_f).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert figs["logit_gap"] == pytest.approx(abs(l_r.mean() - l_f.mean()).item(), rel=1e-5)
    assert figs["logit_real"] == pytest.approx(l_r.mean().item(), rel=1e-5)
    loss.backward()
    assert D.w.grad is not None and fake.grad is None


def test_generator_loss_and_gradient_to_the_fake():
    fake, real = data(1)
    D = LinearD(1).requires_grad_(False)  # the trainer freezes the critic in the generator phase
    loss, figs = GANGeneratorLoss(log_real=False)(make_ctx("generator", fake, real, D))
    loss.backward()
    (x_in, _, _), = D.inputs
    assert x_in.shape[0] == SHAPE[0] and "logit_gap" not in figs
    sig = (T_FIXED / 1000).view(-1, 1, 1, 1, 1)
    l_f = (x_in * D.w).flatten(1).sum(1) + D.b
    assert loss.item() == pytest.approx(F.softplus(-l_f).mean().item(), rel=1e-5)
    # d/dfake softplus(-<w, (1-s) fake + s eps>) / B = -sigmoid(-l_f) (1 - s) w / B
    want = -torch.sigmoid(-l_f).view(-1, 1, 1, 1, 1) * (1 - sig) * D.w / SHAPE[0]
    torch.testing.assert_close(fake.grad, want, rtol=1e-5, atol=1e-7)
    # with log_real (default) the real side joins the batch for the logit gap; same loss value
    D.inputs.clear()
    loss2, figs2 = GANGeneratorLoss()(make_ctx("generator", fake, real, D))
    assert D.inputs[0][0].shape[0] == 2 * SHAPE[0] and "logit_gap" in figs2
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)


def test_relativistic_forms():
    fake, real = data(2)
    D = LinearD(2)
    s = make_ctx("critic", fake, real, D)
    d_loss, _ = GANDiscriminatorLoss(relativistic=True)(s)
    x_in = D.inputs[-1][0]
    l = (x_in * D.w).flatten(1).sum(1) + D.b
    B = SHAPE[0]
    assert d_loss.item() == pytest.approx(F.softplus(-(l[:B] - l[B:])).mean().item(), rel=1e-5)
    g_loss, _ = GANGeneratorLoss(relativistic=True)(make_ctx("generator", fake, real, D))
    x_in = D.inputs[-1][0]
    l = (x_in * D.w).flatten(1).sum(1) + D.b
    assert g_loss.item() == pytest.approx(F.softplus(-(l[B:] - l[:B])).mean().item(), rel=1e-5)


@pytest.mark.parametrize("form", ["apt", "finite_difference"])
def test_finite_difference_r1_r2_penalties_official_forms(form):
    """Official model/one_forcing.py: apt R1 = 1.0 x r1_weight x mean(delta^2) (not / sigma), the
    default form 0.5 x r1_weight x mean((delta / sigma)^2); R2 = 0.5 x r2_weight x
    mean((delta / sigma)^2); the GAN weight scales the GAN term only."""
    fake, real = data(3)
    cfg = {"type": "gan_discriminator", "r1_weight": 1.0, "r1_sigma": 0.1, "r2_weight": 0.001, "r2_sigma": 0.01,
           "penalty_form": form, "weight": 0.03}
    # a constant discriminator has zero penalties
    const = LinearD(const=True)
    loss, figs = build(cfg, LOSSES)(make_ctx("critic", fake, real, const))
    assert figs["r1"] == 0 and figs["r2"] == 0
    b = torch.tensor(0.3)  # logits are the bias b on both sides
    assert loss.item() == pytest.approx(0.03 * (F.softplus(-b) + F.softplus(b)).item(), rel=1e-6)
    # a linear D: all four groups in one critic batch
    D = LinearD(4)
    loss, figs = build(cfg, LOSSES)(make_ctx("critic", fake, real, D))
    (x_in, _, n_text), = D.inputs
    B = SHAPE[0]
    assert x_in.shape[0] == 4 * B and n_text == 4 * B
    l = (x_in * D.w).flatten(1).sum(1) + D.b
    d1, d2 = l[2 * B:3 * B] - l[:B], l[3 * B:] - l[B:2 * B]
    r1 = (d1 ** 2).mean() if form == "apt" else 0.5 * ((d1 / 0.1) ** 2).mean()
    r2 = 0.5 * 0.001 * ((d2 / 0.01) ** 2).mean()
    assert figs["r1"] == pytest.approx(r1.item(), rel=1e-4) and figs["r1"] > 0
    assert figs["r2"] == pytest.approx(r2.item(), rel=1e-4) and figs["r2"] > 0
    base = F.softplus(-l[:B]).mean() + F.softplus(l[B:2 * B]).mean()
    assert figs["gan_d"] == pytest.approx(base.item(), rel=1e-5)
    assert loss.item() == pytest.approx((0.03 * base + r1 + r2).item(), rel=1e-4)
    assert fd_penalty(torch.ones(3), torch.ones(3), 0.1) == 0
    with pytest.raises(ValueError):
        GANDiscriminatorLoss(r1_sigma=0.0)
    with pytest.raises(ValueError, match="penalty_form"):
        GANDiscriminatorLoss(penalty_form="r1")


def test_trainer_hands_the_gan_weight_to_the_discriminator_loss():
    """The recipe's weight reaches gan_discriminator (which scales only its GAN term) and the
    trainer then sums it with weight 1; other losses keep the trainer-side weight."""
    from oneforcing.jobs.train import Train

    job = Train(run_dir="r", models={"generator": {"type": "causal_wan", "config": {}},
                                     "critic": {"type": "fake_score", "config": {}}},
                data={"type": "latent_shards", "path": "d"}, steps=1, critic_losses=[{"type": "flow_denoise", "weight": 2.0},
                                        {"type": "gan_discriminator", "weight": 0.03, "r1_weight": 1.0}])
    (_, flow, w_flow), (_, gan_d, w_gan) = [(w.name, w.fn, w.weight) for w in job.config.critic_losses]
    assert w_flow == 2.0 and w_gan == 1.0 and gan_d.weight == 0.03


def test_real_source_config_is_strict():
    with pytest.raises(UserError, match="real.type: unknown"):
        build({"type": "gan_discriminator", "real": {"type": "student_rollut"}}, LOSSES)
    with pytest.raises(UserError, match="real.step: .*did you mean .steps."):
        build({"type": "gan_generator", "real": {"type": "student_rollout", "step": [1000]}}, LOSSES)


def test_student_rollout_source_uses_n_plus_one_steps_same_noise_no_grad():
    from oneforcing.models import CausalWan
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    wan = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, attention="sdpa")

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.calls = wan, []

        def forward(self, x, t, text, **kw):
            self.calls.append((x.detach().clone(), float(t[0]), kw.get("write_cache", False)))
            return self.model(x, t, text, **kw)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.model, name)

    gen = Recording()
    batch = {"latents": torch.randn(1, 2, 4, 4, 4), "text": torch.randn(1, 5, 24)}
    s = StepContext(step=0, phase="generator", batch=Batch(**batch), generator=gen, critic=None, real_score=None,
                    scheduler=FLOW, timesteps=fixed_t, sampler=SelfForcingRollout(steps=[1000], scheduler=FLOW),
                    uncond_text=None, rng=torch.Generator().manual_seed(0), ctx=RunContext())
    source = StudentRolloutReal()
    assert source.step_list(s) == [1000.0, 500.0]
    real = source(s)
    assert not real.requires_grad and real.shape == batch["latents"].shape
    # per block: 2 denoising steps (t 1000 and warp(500) = 833.3), then a cache write after block 0
    assert [(round(t, 1), w) for _, t, w in gen.calls] == [(1000.0, False), (833.3, False), (0.0, True),
                                                          (1000.0, False), (833.3, False)]
    fake = s.rollout()  # the n-step fake side starts from the same noise
    assert torch.equal(gen.calls[0][0], gen.calls[5][0])
    assert fake.x0.requires_grad
    assert s.rollout(key="asd_real").x0 is s.cache["asd_real"].x0  # cached for the phase's losses


def test_asd_discriminator_with_identical_sides_has_zero_gap():
    fake, _ = data(5)
    D = LinearD(5)

    class Source:
        def __call__(self, s):
            return s.rollout().x0.detach()

    loss_fn = GANDiscriminatorLoss()
    loss_fn.real_source = Source()  # real == fake: a collapsed ASD-like comparison
    _, figs = loss_fn(make_ctx("critic", fake, torch.zeros(SHAPE), D))
    assert figs["logit_gap"] == pytest.approx(0.0, abs=1e-6)


def test_one_forcing_phases_on_tiny_models():
    """Generator phase: DMD + GAN-G through a frozen register critic; critic phase: flow denoise +
    GAN-D on dataset latents. Gradients land on the right model in each phase."""
    from oneforcing.critics import RegisterGANCritic
    from oneforcing.losses.dmd import DMDLoss
    from oneforcing.losses.flow_denoise import FlowDenoiseLoss
    from oneforcing.models import CausalWan
    from oneforcing.schedulers import ShiftedUniformTimesteps
    from oneforcing.testing.tiny_wan import TINY_WAN_CONFIG

    torch.manual_seed(0)
    gen = CausalWan.from_config(TINY_WAN_CONFIG, frames_per_block=1, attention="sdpa")
    teacher = CausalWan.from_config(TINY_WAN_CONFIG, attention="sdpa").requires_grad_(False)
    critic = RegisterGANCritic(config=TINY_WAN_CONFIG, layers=[0, 1], heads=2, ffn_dim=16, attention="sdpa")
    batch = {"latents": torch.randn(1, 3, 4, 4, 4), "text": torch.randn(1, 5, 24)}

    def ctx(phase):
        return StepContext(step=0, phase=phase, batch=Batch(**batch), generator=gen, critic=critic, real_score=teacher,
                           scheduler=FLOW, timesteps=ShiftedUniformTimesteps(scheduler=FLOW),
                           sampler=SelfForcingRollout(steps=[1000], grad_frames=2, scheduler=FLOW),
                           uncond_text=torch.zeros(1, 5, 24),
                           rng=torch.Generator().manual_seed(1), ctx=RunContext())

    critic.requires_grad_(False)  # what TrainedRole.frozen() does in the generator phase
    s = ctx("generator")
    (l_dmd, _), (l_gan, figs) = DMDLoss()(s), GANGeneratorLoss()(s)
    (l_dmd + 0.03 * l_gan).backward()
    assert {"logit_gap", "logit_real", "logit_fake"} <= set(figs)
    assert gen.blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())
    critic.requires_grad_(True)
    gen.zero_grad(set_to_none=True)

    s = ctx("critic")
    (l_flow, _), (l_d, figs) = FlowDenoiseLoss()(s), GANDiscriminatorLoss()(s)
    (l_flow + 0.03 * l_d).backward()
    assert figs["logit_gap"] >= 0 and torch.isfinite(l_d)
    assert critic.head.registers[1].token.grad.abs().sum() > 0
    assert critic.model.proj_out.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in gen.parameters())
