"""Causal consistency distillation (`causal_cd`): the formula, the zero case, where gradient goes,
and the EMA weight swap the target network runs on."""

import contextlib

import pytest
import torch
import torch.nn as nn

from oneforcing.data import Batch
from oneforcing.errors import ComponentError
from oneforcing.jobs.base import RunContext
from oneforcing.losses.consistency import cd_timesteps
from oneforcing.registry import LOSSES, build
from oneforcing.schedulers import FlowMatchScheduler, ShiftedUniformTimesteps
from oneforcing.trainer.step import StepContext

FLOW = FlowMatchScheduler(shift=5.0)
B, F, C, H, W = 3, 4, 2, 2, 2


class Lin(nn.Module):
    """v = a x + mean(text); records (t, keyword arguments) of every call."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.frames_per_block = 1
        self.calls = []

    def forward(self, x, t, text, **kw):
        self.calls.append((t.detach().clone(), kw))
        return self.a * x + text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1)


class Oracle(nn.Module):
    """The exact velocity towards the clean context: v = s (x - clean_x) / sigma, so its x0
    prediction x - sigma v is clean_x wherever s = 1."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.0))
        self.frames_per_block = 1

    def forward(self, x, t, text, *, causal=None, clean_x=None):
        sigma = FLOW.sigma(t).view(x.shape[0], x.shape[1], 1, 1, 1)
        return self.s * (x - clean_x) / sigma


@contextlib.contextmanager
def swapped(module, values):
    """What TrainedRole.weights_swapped does for an unsharded module (tested below on a real role)."""
    saved = {n: p.detach().clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.copy_(values[n])
        try:
            yield module
        finally:
            for n, p in module.named_parameters():
                p.copy_(saved[n])


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(B, F, C, H, W, generator=g), "text": torch.randn(B, 2, 3, generator=g)}


def make_ctx(data, gen, teacher, ema=None, uncond=None, seed=0):
    return StepContext(step=0, phase="generator", batch=Batch(**data), generator=gen, critic=None, real_score=teacher,
                       scheduler=FLOW, timesteps=ShiftedUniformTimesteps(scheduler=FLOW), sampler=None,
                       uncond_text=uncond, rng=torch.Generator().manual_seed(seed), ctx=RunContext(),
                       ema_weights=None if ema is None else (lambda: swapped(gen, ema)))


def test_timesteps_are_neighbours_of_the_shifted_grid_and_never_zero():
    grid = torch.tensor(FLOW.uniform_grid(48))
    t, t_next = cd_timesteps(FLOW, 48, 4000, torch.Generator().manual_seed(0))
    i = (grid[None] == t[:, None]).float().argmax(dim=1)
    assert torch.equal(grid[i], t) and torch.equal(grid[i + 1], t_next)
    assert int(i.min()) == 0 and int(i.max()) == 46          # i uniform in {0 .. N-2}
    assert float(t.max()) == 1000.0 and float(t_next.min()) == pytest.approx(FLOW.warp(1000 / 48))


def test_loss_matches_the_formula_with_cfg_and_the_ema_target():
    data, w, a_t, a, a_ema, N = batch(), 3.0, 0.7, 0.4, 0.1, 8
    uncond = torch.full((1, 2, 3), -0.5)
    gen, teacher = Lin(a), Lin(a_t)
    s = make_ctx(data, gen, teacher, ema={"a": torch.tensor(a_ema)}, uncond=uncond, seed=3)
    loss, figs = build({"type": "causal_cd", "num_steps": N, "cfg_scale": w}, LOSSES)(s)

    rng = torch.Generator().manual_seed(3)
    t, t_next = cd_timesteps(FLOW, N, B, rng)
    x0 = data["latents"]
    eps = torch.randn(x0.shape, generator=rng)
    sig, sig_n = (u.view(B, 1, 1, 1, 1) / 1000 for u in (t, t_next))
    m_c = data["text"].mean(dim=(1, 2)).view(B, 1, 1, 1, 1)
    x_t = (1 - sig) * x0 + sig * eps
    v_teacher = a_t * x_t + (-0.5) + w * (m_c - (-0.5))
    x_next = x_t + (sig_n - sig) * v_teacher
    goal = x_next - sig_n * (a_ema * x_next + m_c)
    pred = x_t - sig * (a * x_t + m_c)
    assert loss.item() == pytest.approx(torch.mean((pred - goal) ** 2).item(), rel=1e-5)
    assert figs["t_mean"] == pytest.approx(t.mean().item(), rel=1e-6)
    assert gen.a.item() == pytest.approx(a)                  # the EMA swap put the weights back

    # every pass is causal and teacher-forced on the real clean latents, with t [B, F]
    (t_teacher, kw_teacher), = teacher.calls                 # cond + uncond as one batch of 2B
    assert t_teacher.shape == (2 * B, F) and torch.equal(kw_teacher["clean_x"], torch.cat([x0, x0]))
    (t_goal, kw_goal), (t_pred, kw_pred) = gen.calls         # target at t', then the student at t
    assert torch.equal(t_goal, t_next[:, None].expand(B, F)) and torch.equal(t_pred, t[:, None].expand(B, F))
    assert all(kw["causal"] is True and torch.equal(kw["clean_x"], x0) for kw in (kw_goal, kw_pred))


def test_exact_models_give_zero_loss():
    """Teacher, target and student all predicting the clean latents exactly: every point of a
    trajectory maps to x0, so the consistency loss is 0 (a wrong t or sigma anywhere breaks it)."""
    gen = Oracle()
    s = make_ctx(batch(), gen, Oracle(), ema={"s": torch.tensor(1.0)}, uncond=torch.zeros(1, 2, 3))
    loss, _ = build({"type": "causal_cd"}, LOSSES)(s)
    assert loss.item() < 1e-10
    gen_off = Oracle()
    s = make_ctx(batch(), gen_off, Oracle(), ema={"s": torch.tensor(0.9)}, uncond=torch.zeros(1, 2, 3))
    assert build({"type": "causal_cd"}, LOSSES)(s)[0].item() > 1e-4   # a target off the oracle is not 0


def test_gradient_reaches_the_student_pass_only():
    """The teacher and the EMA target run without gradient: d loss / d a is the student pass's
    alone, 2 mean((pred - goal) * d pred / d a), with goal a constant."""
    data = batch()
    gen, teacher = Lin(0.4), Lin(0.7)
    s = make_ctx(data, gen, teacher, ema={"a": torch.tensor(0.1)}, uncond=torch.zeros(1, 2, 3), seed=5)
    loss, _ = build({"type": "causal_cd", "num_steps": 8}, LOSSES)(s)
    loss.backward()
    assert teacher.a.grad is None

    rng = torch.Generator().manual_seed(5)
    t, t_next = cd_timesteps(FLOW, 8, B, rng)
    x0 = data["latents"]
    eps = torch.randn(x0.shape, generator=rng)
    sig, sig_n = (u.view(B, 1, 1, 1, 1) / 1000 for u in (t, t_next))
    m = data["text"].mean(dim=(1, 2)).view(B, 1, 1, 1, 1)
    x_t = (1 - sig) * x0 + sig * eps
    x_next = x_t + (sig_n - sig) * (0.7 * x_t + 3.0 * m)   # default cfg_scale 3, the uncond text's mean 0
    goal = x_next - sig_n * (0.1 * x_next + m)
    pred = x_t - sig * (0.4 * x_t + m)
    want = torch.mean(2 * (pred - goal) * (-sig * x_t))
    assert gen.a.grad.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("missing", ["ema", "real_score"])
def test_needs_the_teacher_and_the_ema(missing):
    gen = Lin(0.4)
    s = make_ctx(batch(), gen, None if missing == "real_score" else Lin(0.7),
                 ema=None if missing == "ema" else {"a": torch.tensor(0.1)})
    with pytest.raises(RuntimeError, match="recipe needs `ema:`" if missing == "ema" else "models.real_score"):
        build({"type": "causal_cd"}, LOSSES)(s)


def test_num_steps_below_two_is_refused():
    with pytest.raises(ComponentError, match="num_steps must be >= 2"):
        build({"type": "causal_cd", "num_steps": 1}, LOSSES)


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_trained_role_runs_on_swapped_weights_and_restores_its_own(zero_stage):
    """ZeRO-3 (one rank): the swap writes the EMA's shards and the forward gathers them; the
    role's own weights answer again afterwards, before and after a forward that gathered them."""
    from oneforcing.trainer.config import DeepSpeedOptions, OptimizerConfig
    from oneforcing.trainer.ema import EMA
    from oneforcing.trainer.engines import DeepSpeedPlan, TrainedRole

    torch.manual_seed(0)
    weight, bias = torch.randn(2, 3), torch.randn(2)
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(weight), lin.bias.copy_(bias)
    role = TrainedRole("generator", lin, OptimizerConfig(),
                       DeepSpeedPlan.resolve(DeepSpeedOptions(zero_stage=zero_stage), world_size=1))
    ema = EMA(role.module, decay=0.5)
    for t in ema.shadow.values():
        t.mul_(-2.0)
    x = torch.randn(4, 3)
    own = x @ weight.T + bias
    assert torch.allclose(role.module(x), own)
    with role.weights_swapped(ema.shadow) as m:
        out = m(x)
        assert not out.requires_grad
        assert torch.allclose(out, -2 * own)
    out = role.module(x)
    assert torch.allclose(out, own) and out.requires_grad


ZERO3_SWAP = '''
import torch, torch.nn as nn
from oneforcing.trainer.config import DeepSpeedOptions, OptimizerConfig
from oneforcing.trainer.ema import EMA
from oneforcing.trainer.engines import DeepSpeedPlan, TrainedRole, gathered

torch.distributed.init_process_group("gloo")
torch.manual_seed(0)
net = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(4)])
role = TrainedRole("generator", net, OptimizerConfig(lr=1e-2),
                   DeepSpeedPlan.resolve(DeepSpeedOptions(zero_stage=3), world_size=2))
ema, x = EMA(role.module, decay=0.9), torch.randn(5, 8)

def reference(weights):
    h = x
    for i in range(4):
        h = torch.tanh(h @ weights[f"{i}.0.weight"].T + weights[f"{i}.0.bias"])
    return h

for step in range(3):
    role.backward(role.module(x).pow(2).mean())  # an update of another loss first (its prefetch in flight)
    role.step()
    ema.update(step)
    # the causal_cd pattern: target on the EMA, then the student, backward, step
    with role.weights_swapped(ema.shadow) as m:
        target = m(x)
    full_ema = ema.full_state_dict()
    with gathered(role.module):
        own = {n: p.detach().clone() for n, p in role.module.named_parameters()}
    out = role.module(x)
    assert torch.allclose(target, reference(full_ema), atol=1e-6), step
    assert torch.allclose(out, reference(own), atol=1e-6), step
    role.backward((out - target - 1).pow(2).mean())
    role.step()
    ema.update(step)
assert not torch.allclose(reference(full_ema), reference(own), atol=1e-4)  # the two weights did differ
print("swap ok")
'''


def test_weight_swap_on_two_zero3_ranks(tmp_path):
    """Sharded over 2 ranks, across updates (ZeRO-3's prefetch and reuse active): the target pass
    sees the whole EMA, the student pass the whole own weights. Without the releases around the
    swap, ZeRO-3 is left with parameters in flight and the next gather fails."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "swap.py"
    script.write_text(ZERO3_SWAP)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.count("swap ok") == 2, "\n".join(proc.stderr.splitlines()[-20:])
