"""plot: metrics.jsonl -> PNG panels (losses and logit gaps by default), runs overlaid."""

import json

import pytest
from PIL import Image

import oneforcing.jobs.plot  # noqa: F401  (registers "plot" until jobs/__init__ imports it)
from oneforcing.errors import UserError
from oneforcing.jobs.base import RunContext
from oneforcing.jobs.plot import is_default_metric, moving_average, plot_metrics, read_metrics
from oneforcing.registry import JOBS, build


def _run(path, scale=1.0, torn=False):
    path.mkdir(parents=True)
    lines = []
    for step in range(1, 21):
        row = {"step": step, "time": 1.0 * step, "generator/dmd": scale / step, "generator/loss": scale / step,
               "generator/lr": 1e-5, "generator/grad_norm": 0.5, "critic/flow_denoise": scale * 0.1 * step,
               "critic/gan_discriminator/logit_gap": None if step == 3 else 0.1 * step, "time/step_s": 0.2}
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n" + ('{"step": 21, "generator/dm' if torn else "")
    (path / "metrics.jsonl").write_text(text)
    return path


def test_default_selection_and_reading(tmp_path):
    run = _run(tmp_path / "a", torn=True)
    series = read_metrics(run)
    assert [k for k in series if is_default_metric(k)] == [
        "generator/dmd", "generator/loss", "critic/flow_denoise", "critic/gan_discriminator/logit_gap"]
    assert len(series["critic/gan_discriminator/logit_gap"][0]) == 19  # the null is skipped
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]


def test_png_from_job_and_function(tmp_path):
    a, b = _run(tmp_path / "one_forcing"), _run(tmp_path / "asd", scale=2.0)
    job = build({"type": "plot", "runs": [str(a), str(b / "metrics.jsonl")], "labels": ["OF", "ASD"],
                 "smooth": 3, "out": str(tmp_path / "plots" / "curves.png")}, JOBS)
    path = job.run(RunContext())
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 800  # 3 columns of panels
    one = plot_metrics([a], tmp_path / "gap.png", metrics=["critic/gan_discriminator/logit_gap"])
    with Image.open(one) as img:
        assert img.format == "PNG" and img.size[0] < img.size[1] * 2
    assert not list(tmp_path.glob(".*tmp*"))


def test_user_errors(tmp_path):
    a = _run(tmp_path / "a")
    with pytest.raises(UserError, match="no metrics file"):
        build({"type": "plot", "runs": [str(tmp_path / "missing")], "out": str(tmp_path / "x.png")},
              JOBS).run(RunContext())
    with pytest.raises(UserError, match="generator/dmdd"):
        plot_metrics([a], tmp_path / "x.png", metrics=["generator/dmdd"])
    with pytest.raises(UserError, match="labels"):
        build({"type": "plot", "runs": [str(a)], "labels": ["x", "y"], "out": "x.png"}, JOBS)
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="bad.jsonl:2"):
        read_metrics(tmp_path / "bad.jsonl")


def test_phase_step_places_repeated_generator_figures_once(tmp_path):
    """The trainer logs every phase's latest figures with PHASE/step: a generator value repeated
    over logged rows is one point at its update's step, shown beside the critic's curves."""
    run = tmp_path / "r"
    run.mkdir()
    rows = []
    for step in range(5, 31, 5):  # generator_every 5, log_every 5: updates at 1, 6, 11, ... (1-based)
        g_step = step - 4
        rows.append({"step": step, "generator/dmd": 1.0 / g_step, "generator/gan_generator": 0.02 * g_step,
                     "generator/step": g_step, "critic/flow_denoise": 0.1 * step, "critic/step": step})
    rows.insert(2, dict(rows[1], step=12))  # a logged row between two generator updates
    rows[2]["critic/step"] = rows[2]["step"]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    series = read_metrics(run)
    assert series["generator/dmd"][0] == [1, 6, 11, 16, 21, 26]
    assert series["critic/flow_denoise"][0] == [5, 10, 12, 15, 20, 25, 30]
    defaults = [k for k in series if is_default_metric(k)]
    assert defaults == ["generator/dmd", "generator/gan_generator", "critic/flow_denoise"]
