"""The VBench export on the toy world: VBench's folder layout, the manifest that pins the protocol,
one-line refusals that write nothing, and an interrupted run that never leaves a half-written out_dir."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import oneforcing.jobs.generate
import oneforcing.video
from oneforcing.cli import main
from oneforcing.config import load_recipe
from oneforcing.config.assets import packaged_asset
from oneforcing.jobs import vbench_export
from oneforcing.video import read_mp4

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "recipes/toy/vbench_export.yaml")
PROMPTS = ["a small red circle moving left quickly on a gray background",
           "a large blue square moving up slowly on a black background"]
FRAMES = 5


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A training export whose export.json declares EMA inference weights (the two folders hold
    the same toy weights: which one was read is what the manifest must say)."""
    root = tmp_path_factory.mktemp("vbench") / "export"
    for sub in ("generator", "ema"):
        shutil.copytree(packaged_asset("toy_causal_ode_init"), root / sub)
    (root / "export.json").write_text(json.dumps({"inference_weights": "ema"}))
    return root


def prompts_file(path: Path, lines=PROMPTS) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def run(out: Path, *extra: str, prompts: Path | None = None, checkpoint: Path | None = None) -> int:
    args = ["vbench-export", TOY, f"out_dir={out}", f"num_frames={FRAMES}", "samples_per_prompt=2",
            "progress=false", "batch_size=1"]
    if prompts is not None:
        args.append(f"prompts_file={prompts}")
    if checkpoint is not None:
        args.append(f"checkpoint={checkpoint}")
    return main([*args, *extra])


def test_export_writes_the_vbench_layout_and_a_manifest_that_pins_the_protocol(export, tmp_path, capsys):
    prompts = prompts_file(tmp_path / "prompts.txt")
    out = tmp_path / "vbench"
    assert run(out, "seed=3", prompts=prompts, checkpoint=export) == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.glob("*.mp4"))
    assert names == sorted(f"{p}-{i}.mp4" for p in PROMPTS for i in (0, 1))  # VBench: prompt text + -{index}
    assert read_mp4(out / names[0]).shape == (FRAMES, 32, 32, 3)
    assert not (tmp_path / ".vbench.partial").exists()

    m = json.loads((out / "vbench_manifest.json").read_text())
    assert m["prompts"]["set"] == "official" and m["prompts"]["count"] == 2 and m["prompts"]["names_file"] is None
    assert m["prompts"]["read_by_model"]["sha256"] == hashlib.sha256(prompts.read_bytes()).hexdigest()
    assert m["prompts"]["read_by_model"]["published_as"] is None  # not a published prompt file
    assert m["samples_per_prompt"] == 2 and m["seed"] == 3
    assert [v["file"] for v in m["videos"]] == [f"{p}-{i}.mp4" for p in PROMPTS for i in (0, 1)]
    assert len({v["seed"] for v in m["videos"]}) == 4
    assert m["weights"] == {"requested": "auto", "used": "EMA", "folder": str(export / "ema"),
                            "checkpoint": str(export)}
    assert m["sampler"]["first_frame_enhancement"] is True
    assert m["sampler"]["timesteps"] == [1000.0] and len(m["sampler"]["first_block_timesteps"]) == 4
    assert m["video"] == {"num_frames": FRAMES, "height": 32, "width": 32, "fps": 16, "quality": 8.0}
    assert m["code"]["commit"]  # a sha, or "uncommitted" with HEAD and the diff's hash
    assert m["code"]["commit"] != "uncommitted" or len(m["code"]["diff_sha256"]) == 16
    speed = m["speed"]
    assert speed["device"].startswith("CPU ") and speed["peak_memory_of"] == "process RSS"
    assert speed["peak_memory_gib"] > 0 and speed["latency_to_first_frame_s"] > 0
    assert 0 < speed["end_to_end_frames_per_s"] <= speed["dit_frames_per_s"]  # decode only adds time
    assert speed["videos_timed"] == 3 and speed["warmup_batches_excluded"] == 1  # batch 1: the first is warm-up
    # The resolved recipe beside it reruns the row.
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe["job"] == "vbench_export" and recipe["prompts_file"] == str(prompts) and recipe["seed"] == 3
    # Same seeds, same videos: a second export of that recipe is byte-identical in pixels.
    again = tmp_path / "again"
    assert main(["run", str(out / "recipe.yaml"), f"out_dir={again}"]) == 0
    for name in names:
        assert (read_mp4(out / name) == read_mp4(again / name)).all()


def test_extended_prompts_name_the_videos_by_vbench_prompts(export, tmp_path, monkeypatch, capsys):
    names = prompts_file(tmp_path / "names.txt")
    extended = prompts_file(tmp_path / "extended.txt", [p + " in a calm scene" for p in PROMPTS])
    monkeypatch.setitem(vbench_export.KNOWN_PROMPT_FILES, hashlib.sha256(names.read_bytes()).hexdigest(),
                        "a published prompt file")
    out = tmp_path / "vbench"
    assert run(out, "prompt_set=extended", f"names_file={names}", "samples_per_prompt=1",
               "sampler.first_block_steps=[1000]", prompts=extended, checkpoint=export) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(f"{p}-0.mp4" for p in PROMPTS)
    m = json.loads((out / "vbench_manifest.json").read_text())
    assert m["prompts"]["set"] == "extended"
    assert m["prompts"]["names_file"]["published_as"] == "a published prompt file"
    assert m["prompts"]["read_by_model"]["sha256"] == hashlib.sha256(extended.read_bytes()).hexdigest()
    assert [v["prompt"] for v in m["videos"]] == [p + " in a calm scene" for p in PROMPTS]
    assert m["sampler"]["first_frame_enhancement"] is False  # one step for every block


BAD = [
    (["prompt_set=longer"], "prompt_set"),
    (["prompt_set=extended"], "names_file"),
    (["names_file=recipes/toy/study_prompts.txt"], "names_file"),
    (["samples_per_prompt=0"], "samples_per_prompt"),
    (["prompts_file=nowhere/prompts.txt"], "prompts_file"),
    (["checkpoint=nowhere/export"], "checkpoint"),
    (["dtype=float8"], "dtype"),
    (["weights=best"], "weights"),
    (["height=30"], "height"),  # found once generate builds the codec: the partial folder goes too
]


@pytest.mark.parametrize("extra,key", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(export, tmp_path, capsys, extra, key):
    prompts = prompts_file(tmp_path / "prompts.txt")
    out = tmp_path / "vbench"
    assert run(out, *extra, prompts=prompts, checkpoint=export) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress logs may come first; one error line, last
    assert [ln for ln in err if ln.startswith("error:")] == err[-1:] and key in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]  # no out_dir, no partial folder


def test_a_used_out_dir_is_refused_and_left_alone(export, tmp_path, capsys):
    prompts = prompts_file(tmp_path / "prompts.txt")
    out = tmp_path / "vbench"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert run(out, prompts=prompts, checkpoint=export) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out_dir" in err[0] and "not an empty folder" in err[0]
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not (tmp_path / ".vbench.partial").exists()


def test_an_interrupted_export_never_shows_a_half_written_out_dir_and_resumes(export, tmp_path, monkeypatch,
                                                                                capsys):
    prompts = prompts_file(tmp_path / "prompts.txt")
    out, partial = tmp_path / "vbench", tmp_path / ".vbench.partial"
    write, calls = oneforcing.video.write_mp4, []

    def dies_on_the_third(path, *a, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(path, *a, **kw)

    monkeypatch.setattr(oneforcing.jobs.generate, "write_mp4", dies_on_the_third)
    assert run(out, prompts=prompts, checkpoint=export) == 130
    assert not out.exists() and len(list(partial.glob("*.mp4"))) == 2
    monkeypatch.setattr(oneforcing.jobs.generate, "write_mp4", write)
    capsys.readouterr()
    assert run(out, "seed=5", prompts=prompts, checkpoint=export) == 2  # other settings: never mixed in
    assert "other settings" in capsys.readouterr().err and len(list(partial.glob("*.mp4"))) == 2
    assert run(out, prompts=prompts, checkpoint=export) == 0, capsys.readouterr().err
    assert not partial.exists() and len(list(out.glob("*.mp4"))) == 4
    m = json.loads((out / "vbench_manifest.json").read_text())
    assert len(m["videos"]) == 4 and m["speed"]["videos_timed"] == 1  # 2 rendered now, the first as warm-up
    assert run(out, prompts=prompts, checkpoint=export) == 2  # finished: refused, not overwritten
    assert "already holds a finished export" in capsys.readouterr().err
