"""ToyBench validation: real toy videos score ~100%, noise and frozen videos fall to chance / 0."""

import json

import pytest
import torch
import torch.nn.functional as F

from oneforcing.eval.io import load_videos, save_videos
from oneforcing.toy.world import ToyWorld
import oneforcing.toy.jobs.score  # noqa: F401  (registers "eval" until jobs/__init__ imports it)
from oneforcing.jobs.base import RunContext
from oneforcing.registry import JOBS, METRICS, build

ACCURACIES = ("colour", "shape", "size", "count", "direction", "dynamic_degree")
CHANCE = {"colour": 1 / 6, "shape": 1 / 3, "size": 1 / 2, "count": 1 / 2, "direction": 1 / 4, "dynamic_degree": 1 / 2}



@pytest.fixture(scope="module")
def real():
    world = ToyWorld("test", 192, seed=11)
    return world.render(range(192)), world.prompts()


@pytest.fixture(scope="module")
def bench():
    return build({"type": "toybench"}, METRICS)


@pytest.fixture(scope="module")
def real_result(real, bench):
    return bench(*real)


def test_real_videos_score_full_accuracy(real_result, bench):
    raw = real_result["raw"]
    assert all(raw[k] >= 0.98 for k in ACCURACIES), raw
    assert raw["speed_error"] < 0.05 and raw["sharpness"] > 0.95 and raw["subject_consistency"] > 0.95
    assert raw["fd"] < 0.2 and real_result["total"] > 0.95
    held = ToyWorld("heldout", 64, seed=11)
    raw = bench(held.render(range(64)), held.prompts())["raw"]
    assert all(raw[k] >= 0.98 for k in ACCURACIES), raw


def test_noise_falls_to_chance(real, real_result, bench):
    noise = torch.rand(real[0].shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = bench(noise, real[1])
    assert all(result["raw"][k] <= CHANCE[k] for k in ACCURACIES), result["raw"]
    assert result["raw"]["fd"] > 5 and result["total"] < 0.1


def test_frozen_first_frame_has_no_motion(real, real_result, bench):
    frozen = real[0][:, :1].expand_as(real[0]).contiguous()
    result = bench(frozen, real[1])
    raw = result["raw"]
    assert raw["direction"] <= 0.02 and raw["dynamic_degree"] <= 0.02 and raw["speed_error"] > 0.95
    assert all(raw[k] >= 0.98 for k in ("colour", "shape", "size", "count"))  # still recognisable
    assert raw["fd"] > 3 * real_result["raw"]["fd"]
    assert result["total"] < real_result["total"] - 0.1


def test_blur_is_measurably_worse(real, real_result, bench):
    v = real[0]
    blurred = F.avg_pool2d(v.flatten(0, 1), 3, 1, 1, count_include_pad=False).view_as(v)
    result = bench(blurred, real[1])
    assert result["raw"]["sharpness"] < real_result["raw"]["sharpness"] - 0.03
    assert result["raw"]["fd"] > 3 * real_result["raw"]["fd"]
    assert result["total"] < real_result["total"] - 0.02


def test_eval_job_reads_vbench_folder(real, tmp_path):
    pick = [0, 0, *range(1, 11)]  # a repeated prompt gets index 1
    videos, prompts = real[0][pick], [real[1][i] for i in pick]
    paths = save_videos(tmp_path / "samples", videos, prompts)
    assert paths[1] == tmp_path / "samples" / f"{prompts[0]}-1.mp4"
    loaded, got = load_videos(tmp_path / "samples")
    order = sorted(range(12), key=lambda i: paths[i].name)  # the loader reads files in name order
    assert got == [prompts[i] for i in order]
    assert (loaded - videos[order]).abs().max() < 0.02  # lossless x264 4:4:4, up to colour rounding
    job = build({"type": "eval", "videos": str(tmp_path / "samples"), "out": str(tmp_path / "eval"),
                 "name": "real", "fd": False}, JOBS)
    job.run(RunContext())
    result = json.loads((tmp_path / "eval" / "toybench.json").read_text())
    assert result["name"] == "real" and result["num_videos"] == 12
    assert all(result["raw"][k] >= 0.98 for k in ACCURACIES)
    table = (tmp_path / "eval" / "toybench.md").read_text().splitlines()
    assert table[0].startswith("| name |") and table[2].startswith("| real | - | 12 |")
    # the generate job's manifest names the prompts of slug-named files
    (tmp_path / "samples" / "generate_manifest.json").write_text(json.dumps(
        {"videos": [{"file": p.name, "prompt": "a small red circle moving up slowly on a gray background"}
                    for p in paths[:2]]}))
    loaded, got = load_videos(tmp_path / "samples")
    assert loaded.shape[0] == 2 and got == ["a small red circle moving up slowly on a gray background"] * 2
    save_videos(tmp_path / "s.safetensors", videos, prompts)
    loaded, got = load_videos(tmp_path / "s.safetensors")
    assert got == prompts and torch.equal(loaded, videos)
