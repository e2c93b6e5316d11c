"""The analytic toy teacher: prompt decoding, the exact posterior mean against brute force, its limits."""

import pytest
import torch

from oneforcing.errors import UserError
from oneforcing.jobs.shared import load_generator_model, model_config
from oneforcing.registry import MODELS, build
from oneforcing.schedulers import FlowMatchScheduler
from oneforcing.toy import ToyCodec, ToyWorld, render_scenes
from oneforcing.toy.analytic_teacher import ToyAnalyticTeacher, grid
from oneforcing.toy.world import object_geometry, parse_prompt, place_start

FRAMES, SIZE = 3, 16  # small videos: latents [3, 16, 4, 4]
FLOW = FlowMatchScheduler()  # the recipe's convention, which a job or the trainer hands the teacher


@pytest.fixture(scope="module")
def teacher():
    return ToyAnalyticTeacher(FLOW, frames=FRAMES, size=SIZE, refine=0, unconditional_prompts=2)


def _scenes(count):
    world = ToyWorld("test", 64, seed=5, frames=FRAMES, size=SIZE)
    return [s for s in world.scenes(range(64)) if len(s["objects"]) == count]


def _text(teacher, prompts):
    return teacher.decoder.encoder.encode(prompts)


def _candidates(prompt, step, lanes):
    """Every full scene (all objects placed, one lane order) on the teacher's start grid."""
    parsed = parse_prompt(prompt)
    per_object = []
    for obj, lane in zip(parsed["objects"], lanes):
        radius, velocity, along, across = object_geometry(obj, lane, FRAMES, SIZE)
        per_object.append([dict(obj, radius=radius, velocity=velocity,
                                start=list(place_start(obj["direction"], a, c, SIZE)))
                           for a in grid(*along, step) for c in grid(*across, step)])
    combos = [[o] for o in per_object[0]] if len(per_object) == 1 else \
        [[o0, o1] for o0 in per_object[0] for o1 in per_object[1]]
    return [{"background": parsed["background"], "objects": objs, "frames": FRAMES, "size": SIZE} for objs in combos]


def test_decoder_round_trips_prompts_and_refuses_others(teacher):
    prompts = [s["prompt"] for s in _scenes(1)[:2] + _scenes(2)[:2]] + [""]
    emb = _text(teacher, prompts)
    assert [teacher.decoder.decode(e) for e in emb] == prompts
    with pytest.raises(UserError, match="non-zero rows"):
        teacher.decoder.decode(torch.randn(32, 32) * (torch.arange(32) < 5)[:, None])
    with pytest.raises(UserError, match="not the toy text encoder"):
        teacher.decoder.decode(torch.randn(32, 32) * (torch.arange(32) < 12)[:, None])


@pytest.mark.parametrize("t", [300.0, 700.0])
def test_two_object_posterior_equals_brute_force(teacher, t):
    """Both lane orders x every pair of grid starts, rendered whole: the factorised posterior is exact."""
    scene = _scenes(2)[0]
    codec = ToyCodec()
    halves = [(0.0, SIZE / 2), (SIZE / 2, float(SIZE))]
    full = [c for lanes in (halves, halves[::-1]) for c in _candidates(scene["prompt"], 1.0, lanes)]
    z = codec.encode(render_scenes(full)).double()                                   # [2 J, F, C, h, w]
    s = t / 1000
    x = (1 - s) * codec.encode(render_scenes([scene])) + s * torch.randn(1, FRAMES, 16, 4, 4,
                                                                          generator=torch.Generator().manual_seed(0))
    ll = -((x.double() - (1 - s) * z) ** 2).sum(dim=(1, 2, 3, 4)) / (2 * s * s)
    expected = torch.einsum("j,j...->...", torch.softmax(ll, 0), z)
    v = teacher(x, torch.tensor([t]), _text(teacher, [scene["prompt"]]))
    x0 = FlowMatchScheduler().x0_from_v(x, v, torch.tensor([t]))
    assert torch.allclose(x0[0].double(), expected, atol=2e-4), float((x0[0] - expected).abs().max())


def test_sigma_to_zero_returns_the_nearest_candidate_and_one_means_the_prior(teacher):
    scene = _scenes(1)[0]
    codec = ToyCodec()
    cands = codec.encode(render_scenes(_candidates(scene["prompt"], 1.0, [(0.0, float(SIZE))])))
    text = _text(teacher, [scene["prompt"]] * 2)
    x = torch.stack([cands[3], cands[-1]])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([1.0, 1.0])                                                     # sigma 0.001
    x_t = 0.999 * x + 0.001 * noise
    x0 = FlowMatchScheduler().x0_from_v(x_t, teacher(x_t, t, text), t)
    assert torch.allclose(x0, x, atol=1e-4)
    # sigma = 1: x_t says nothing, so E[z | x_t] is the prompt's prior mean (the candidates' average)
    t = torch.tensor([1000.0, 1000.0])
    x0 = FlowMatchScheduler().x0_from_v(noise, teacher(noise, t, text), t)
    assert torch.allclose(x0, cands.mean(0).expand_as(x0), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prompt_with_one_possible_video_gives_it_exactly(dtype):
    # a world whose prompts each allow one video: one start per object (a grid coarser than every
    # start range) and no refinement (which would search the continuous range again)
    one = ToyAnalyticTeacher(FLOW, frames=FRAMES, size=SIZE, grid_step=100.0, refine=0, unconditional_prompts=0)
    scene = _scenes(1)[1]
    video = ToyCodec().encode(render_scenes(_candidates(scene["prompt"], 100.0, [(0.0, float(SIZE))])))[0]
    text = _text(one, [scene["prompt"]] * 2).to(dtype)
    x = torch.randn(2, FRAMES, 16, 4, 4, generator=torch.Generator().manual_seed(2)).to(dtype)
    t = torch.tensor([[999.0, 500.0, 50.0], [20.0, 20.0, 20.0]])                   # per-frame noise levels
    v = one(x, t, text)
    assert v.dtype == dtype
    x0 = x.float() - (t / 1000)[:, :, None, None, None] * v.float()
    tol = 1e-4 if dtype == torch.float32 else 0.1
    assert torch.allclose(x0, video.expand_as(x0), atol=tol)
    with pytest.raises(UserError, match="unconditional"):
        one(x, t, _text(one, ["", ""]).to(dtype))


def test_refinement_unsnaps_off_grid_latents_at_low_noise():
    scenes = _scenes(1)[:2] + _scenes(2)[:1]
    codec = ToyCodec()
    z = codec.encode(render_scenes(scenes))
    t, s = torch.full((3,), 20.0), 0.02
    x = (1 - s) * z + s * torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
    errors = {}
    for refine in (0, 4):
        m = ToyAnalyticTeacher(FLOW, frames=FRAMES, size=SIZE, refine=refine, unconditional_prompts=0)
        x0 = FlowMatchScheduler().x0_from_v(x, m(x, t, _text(m, [sc["prompt"] for sc in scenes])), t)
        errors[refine] = float(((x0 - z) ** 2).mean())
    assert errors[4] < 2e-3 and errors[0] > 5 * errors[4], errors


def test_registered_with_the_learned_teachers_call_contract(tmp_path):
    (tmp_path / "config.json").write_text('{"grid_step": 2.0, "unconditional_prompts": 1}')
    m = build({"type": "toy_analytic_teacher", "pretrained": str(tmp_path), "causal": False, "frames": FRAMES,
               "size": SIZE}, MODELS, scheduler=FLOW)
    assert m.grid_step == 2.0 and m.unconditional_prompts == 1 and m.refine == 4   # the folder's, else defaults
    explicit = build({"type": "toy_analytic_teacher", "pretrained": str(tmp_path), "grid_step": 0.5}, MODELS,
                     scheduler=FLOW)
    assert explicit.grid_step == 0.5 and explicit.unconditional_prompts == 1       # the recipe's key wins
    scene = _scenes(1)[0]
    x = torch.randn(2, FRAMES, 16, 4, 4, generator=torch.Generator().manual_seed(4))
    text = _text(m, [scene["prompt"], ""])                                            # cond and uncond rows
    v = m(x, torch.tensor([600.0, 600.0]), text, causal=False)
    assert v.shape == x.shape and torch.isfinite(v).all()
    with pytest.raises(ValueError, match="toy world"):
        m(torch.zeros(1, FRAMES + 1, 16, 4, 4), torch.tensor([500.0]), text[:1])


@pytest.mark.parametrize("n", [1, 2])
def test_a_world_of_discrete_starts_and_its_exact_teacher(n):
    """start_positions n snaps the same draws (same prompts) to n values per start coordinate; the
    teacher with the same n holds exactly those candidates, so at low noise it returns the real video."""
    free = ToyWorld("test", 16, seed=5, frames=FRAMES, size=SIZE)
    world = ToyWorld("test", 16, seed=5, frames=FRAMES, size=SIZE, start_positions=n)
    assert world.prompts() == free.prompts()
    groups = {}  # one-object scenes of one geometry (size, speed, direction) share their n x n starts
    for s in ToyWorld("train", 300, seed=5, frames=FRAMES, size=SIZE, start_positions=n).scenes(range(300)):
        if len(s["objects"]) == 1:
            o = s["objects"][0]
            groups.setdefault((o["size"], o["speed"], o["direction"]), set()).add(tuple(o["start"]))
    assert max(len(v) for v in groups.values()) == n * n
    assert any(a["objects"][0]["start"] != b["objects"][0]["start"]
               for a, b in zip(world.scenes(range(16)), free.scenes(range(16))))
    exact = ToyAnalyticTeacher(FLOW, frames=FRAMES, size=SIZE, unconditional_prompts=0, start_positions=n)
    assert exact.refine == 0
    scenes = world.scenes(range(4))
    video = ToyCodec().encode(render_scenes(scenes))
    text = _text(exact, [s["prompt"] for s in scenes])
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(3))
    t = torch.full((4,), 30.0)
    x_t = 0.97 * video + 0.03 * noise
    x0 = FlowMatchScheduler().x0_from_v(x_t, exact(x_t, t, text), t)
    assert torch.allclose(x0, video, atol=1e-3)
    with pytest.raises(UserError, match="start_positions"):
        ToyWorld("test", 4, start_positions=0)


def test_the_noise_level_is_the_recipe_schedulers(teacher, tmp_path):
    """The teacher reads sigma(t) off the scheduler it is handed: on a 2000 grid, t = 1200 is the
    default grid's 600. Jobs hand it the recipe's; a recipe cannot set it inside the model."""
    scene = _scenes(1)[0]
    x = torch.randn(1, FRAMES, 16, 4, 4, generator=torch.Generator().manual_seed(6))
    text = _text(teacher, [scene["prompt"]])
    wide = ToyAnalyticTeacher(FlowMatchScheduler(num_train_timesteps=2000), frames=FRAMES, size=SIZE, refine=0,
                              unconditional_prompts=2)
    assert torch.allclose(wide(x, torch.tensor([1200.0]), text), teacher(x, torch.tensor([600.0]), text))
    assert not torch.allclose(wide(x, torch.tensor([600.0]), text), teacher(x, torch.tensor([600.0]), text))
    cfg = model_config({"type": "toy_analytic_teacher", "refine": 0, "frames": FRAMES, "size": SIZE})
    loaded = load_generator_model(cfg, tmp_path, None, FlowMatchScheduler(num_train_timesteps=2000))
    assert loaded.scheduler.num_train_timesteps == 2000
    with pytest.raises(UserError, match="gets 'scheduler' from the job"):
        model_config({"type": "toy_analytic_teacher", "scheduler": {"type": "flow_match"}})
