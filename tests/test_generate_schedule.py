"""`generate` with a prompt_schedule, end to end on tiny offline models: one video per sample whose
frames before the switch are those of the opening prompt's video, a manifest naming where each
switch took effect, re-cache and keep giving different videos after the switch."""

import json

import pytest
import torch

import oneforcing.models.text_encoder  # noqa: F401  (registers umt5)
import oneforcing.toy.codec  # noqa: F401  (registers toy_codec)
from oneforcing.config.assets import packaged_asset
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.registry import JOBS, build
from oneforcing.video import read_mp4

# The toy world (its text encoder, codec and shipped causal ODE init): a model that reads its
# prompts, so a switch visibly changes the video. The toy codec keeps every frame (x1 in time).
FRAMES, H, W = 8, 32, 32
RED = "a large red circle moving right slowly on a black background"
BLUE = "a large blue square moving up slowly on a white background"
SCHEDULE = [{"frame": 0, "prompt": RED}, {"frame": 4, "prompt": BLUE}]


def _cfg(out_dir, **kw):
    cfg = {"type": "generate", "checkpoint": str(packaged_asset("toy_causal_ode_init")), "out_dir": str(out_dir),
           "text_encoder": {"type": "umt5", "path": str(packaged_asset("toy_text_encoder")), "max_length": 32},
           "vae": {"type": "toy_codec"}, "model": {"type": "causal_wan", "attention": "sdpa", "frames_per_block": 1},
           "sampler": {"type": "causal_inference"}, "num_frames": FRAMES, "height": H, "width": W,
           "progress": False, "quality": 10, "filename": "{prompt_index}-{index}.mp4"}
    cfg.update(kw)
    return cfg


def _video(path) -> torch.Tensor:
    return torch.from_numpy(read_mp4(path)).float()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scheduled_video(tmp_path, dtype):
    videos = {}
    for mode in ("recache", "keep"):
        out = tmp_path / mode
        build(_cfg(out, prompt_schedule=SCHEDULE, prompt_switch=mode, samples_per_prompt=2, dtype=dtype),
              JOBS).run(RunContext(seed=3))
        manifest = json.loads((out / "generate_manifest.json").read_text())
        assert manifest["prompt_switch"] == mode
        assert [(s["frame"], s["effective_frame"]) for s in manifest["prompt_schedule"]] == [(0, 0), (4, 4)]
        assert [v["file"] for v in manifest["videos"]] == ["0-0.mp4", "0-1.mp4"]
        videos[mode] = _video(out / "0-0.mp4")
        assert videos[mode].shape == (FRAMES, H, W, 3)
    # The plain video of the opening prompt, same seed: identical until the switch.
    build(_cfg(tmp_path / "plain", prompt=RED, dtype=dtype), JOBS).run(RunContext(seed=3))
    plain = _video(tmp_path / "plain" / "0-0.mp4")
    for mode in ("recache", "keep"):
        assert (videos[mode][:4] - plain[:4]).abs().max() <= 2  # codec rounding only
        # The background turns from black to white (mean pixel value, 0..255).
        assert videos[mode][-1].mean() > plain[-1].mean() + 60
    # Re-cache drops the old scene's K/V: the new background shows sooner than with keep.
    assert videos["recache"][4].mean() > videos["keep"][4].mean() + 10


def test_schedule_needs_the_causal_sampler(tmp_path):
    with pytest.raises(UserError) as err:
        build(_cfg(tmp_path, prompt_schedule=SCHEDULE,
                   sampler={"type": "teacher_ode"}), JOBS)
    assert err.value.key == "sampler.type"
    with pytest.raises(UserError, match="same block"):  # chunk-wise: frames 1 and 2 are in one block
        build(_cfg(tmp_path, prompt_schedule=[*SCHEDULE[:1], {"frame": 1, "prompt": BLUE}, {"frame": 2, "prompt": RED}],
                   model={"type": "causal_wan", "attention": "sdpa", "frames_per_block": 3}), JOBS).run(RunContext(seed=3))
    assert not list(tmp_path.iterdir())  # refused before anything was written
