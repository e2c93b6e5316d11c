"""The toy seed report: statistics, claim verdicts, the report text, the job's contracts; and
(slow) the quick report end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneforcing.errors import UserError
from oneforcing.toy.jobs.report import Task, ToyReport
from oneforcing.toy.jobs.report_doc import Claims, late_mean, write_report
from oneforcing.toy.jobs.report_stats import direction, mean_ci, paired, t975

ROOT = Path(__file__).resolve().parents[1]


def test_t_interval_matches_the_textbook():
    est = mean_ci([1.0, 2.0, 3.0])          # sd 1, n 3: half-width t_{0.975,2} / sqrt(3)
    assert est.mean == pytest.approx(2.0)
    assert est.half_width == pytest.approx(4.303 / 3 ** 0.5, rel=1e-4)
    assert t975(1) == pytest.approx(12.706) and t975(100) == pytest.approx(1.96)
    assert mean_ci([5.0]).half_width is None and mean_ci([5.0]).format() == "5.00"
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_direction_uses_the_per_seed_difference():
    # Large spread across seeds, constant paired difference: the paired CI is tight and above 0.
    a, b = [10.0, 50.0, 90.0], [9.0, 49.1, 88.9]
    assert direction(paired(a, b)) == ">"
    assert direction(paired(b, a)) == "<"
    assert direction(paired([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])) == "≈"
    assert direction(paired([1.0], [0.0])) == "?"   # one seed: no verdict
    with pytest.raises(ValueError):
        paired([1.0], [1.0, 2.0])


def _result(total, dyn=0.3, subj=0.5):
    return {"num_videos": 8, "total": total, "quality": total, "semantic": total,
            "raw": {"dynamic_degree": dyn, "subject_consistency": subj, "count": 0.5, "shape": 0.3,
                    "direction": 0.2}}


def _claims(totals: dict[str, list[float]], dyn: dict[str, list[float]] | None = None, gaps=None):
    results = {n: {s: _result(v, (dyn or {}).get(n, [0.3] * 3)[s]) for s, v in enumerate(vals)}
               for n, vals in totals.items()}
    labels = {n: n for n in totals}
    return Claims(results, gaps or {}, {n: 100 for n in totals}, labels)


def test_claim_a_supported_contradicted_and_unresolved():
    ok = _claims({"one_forcing_framewise": [0.5, 0.6, 0.7], "asd_1step": [0.4, 0.5, 0.6],
                  "self_forcing_1step": [0.3, 0.4, 0.5]})
    assert ok.a()[0].startswith("supported")
    bad = _claims({"one_forcing_framewise": [0.3, 0.4, 0.5], "asd_1step": [0.4, 0.5, 0.6],
                   "self_forcing_1step": [0.3, 0.4, 0.5]})
    assert bad.a()[0].startswith("contradicted")
    noisy = _claims({"one_forcing_framewise": [0.5, 0.4, 0.7], "asd_1step": [0.4, 0.5, 0.6],
                     "self_forcing_1step": [0.3, 0.4, 0.5]})
    assert noisy.a()[0].startswith("not resolved")
    assert _claims({"asd_1step": [0.1] * 3}).a()[0].startswith("not run")


def test_claim_d_needs_a_collapse_not_just_a_drop():
    totals = {"one_forcing_fkl": [0.4] * 3, "one_forcing_chunkwise": [0.4] * 3}
    collapsed = _claims(totals, {"one_forcing_fkl": [0.01, 0.02, 0.015], "one_forcing_chunkwise": [0.3, 0.32, 0.31]})
    assert collapsed.d()[0].startswith("supported")
    dropped = _claims(totals, {"one_forcing_fkl": [0.25, 0.26, 0.255], "one_forcing_chunkwise": [0.3, 0.32, 0.31]})
    assert dropped.d()[0].startswith("partly")


def test_claim_e_reads_the_late_logit_gap():
    curve = lambda early, late: ([0, 10, 20, 30], [early, early, late, late])  # noqa: E731
    gaps = {"one_forcing_framewise": {s: curve(0.1, 1.5 + 0.1 * s) for s in range(3)},
            "asd_1step": {s: curve(1.0, 0.001) for s in range(3)}}
    assert late_mean(curve(0.1, 2.0)) == pytest.approx(2.0)
    claims = _claims({"one_forcing_framewise": [0.5] * 3, "asd_1step": [0.5] * 3}, gaps=gaps)
    assert claims.e()[0].startswith("supported")
    gaps["asd_1step"] = {s: curve(1.0, 0.5) for s in range(3)}
    assert claims.e()[0].startswith("partly")


def _job(tmp_path, **kw):
    cfg = dict(methods={"one_forcing_framewise": {"recipe": "one_forcing_framewise.yaml"}},
               seeds=[0, 1], evaluate={"recipe": "eval_student.yaml"}, out=str(tmp_path / "r.md"),
               runs_dir=str(tmp_path / "runs"))
    cfg.update(kw)
    return ToyReport(**cfg)


@pytest.mark.parametrize("kw, key", [({"seeds": []}, "seeds"), ({"seeds": [0, 0]}, "seeds"),
                                     ({"workers": 0}, "workers"),
                                     ({"methods": {"x": {"recipe": "a.yaml", "typo": 1}}}, "methods.x"),
                                     ({"methods": {"x": {"label": "no recipe"}}}, "methods.x"),
                                     ({"references": {"one_forcing_framewise": {}}}, "references"),
                                     ({"prepare": [{"recipe": "data.yaml", "typo": 1}]}, "prepare[0]")])
def test_bad_config_names_the_key(tmp_path, kw, key):
    with pytest.raises(UserError) as err:
        _job(tmp_path, **kw)
    assert err.value.key == key


def test_plan_and_keys_cover_every_method_seed_and_reference(tmp_path):
    job = _job(tmp_path, references={"teacher": {"recipe": "eval_teacher.yaml", "seeds": [0],
                                                "label": "reference: a label with a colon"}})
    tasks = job.plan(ROOT / "recipes" / "toy")
    assert [t.title for t in tasks] == ["one_forcing_framewise/seed0", "one_forcing_framewise/seed1",
                                        "teacher/seed0"]
    job.validate(tasks)
    assert tasks[0].steps == 200 and len({t.key for t in tasks}) == 3
    train_overrides = tasks[1].commands[0][1]
    assert f"run_dir={tmp_path / 'runs' / 'one_forcing_framewise' / 'seed1'}" in train_overrides
    assert "seed=1" in train_overrides and "seed=1" in tasks[1].commands[1][1]


def test_a_folder_not_made_by_the_report_is_never_touched(tmp_path):
    job = _job(tmp_path)
    task = job.plan(ROOT / "recipes" / "toy")[0]
    task.dir.mkdir(parents=True)
    (task.dir / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by this report"):
        job.run_task(task)
    assert (task.dir / "precious.txt").read_text() == "keep"


def test_a_finished_task_with_the_same_key_is_not_run_again(tmp_path):
    job = _job(tmp_path)
    task = job.plan(ROOT / "recipes" / "toy")[0]
    task.key = "abc"
    task.dir.mkdir(parents=True)
    (task.dir / "task.json").write_text(json.dumps({"key": "abc", "state": "done", "seconds": {"train": 3.0}}))
    job._call = lambda *a: pytest.fail("a cached task ran")
    assert job.run_task(task).cached and task.seconds == {"train": 3.0}


def test_report_text_from_finished_tasks(tmp_path):
    job = _job(tmp_path, methods={"one_forcing_framewise": {"recipe": "x.yaml"}, "asd_1step": {"recipe": "x.yaml"}},
               seeds=[0, 1, 2])
    tasks = []
    for name, base in (("one_forcing_framewise", 0.5), ("asd_1step", 0.4)):
        for seed in range(3):
            d = tmp_path / "runs" / name / f"seed{seed}"
            (d / "eval").mkdir(parents=True)
            (d / "eval" / "toybench.json").write_text(json.dumps(_result(base + 0.01 * seed)))
            gap = 1.5 if name == "one_forcing_framewise" else 0.001
            rows = [{"step": s, "critic/gan_discriminator/logit_gap": gap, "critic/loss": 1.0,
                     "generator/dmd": 0.5, "generator/step": s} for s in range(0, 40, 5)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            tasks.append(Task(name, name, "method", seed, d, [], steps=200, seconds={"train": 60.0, "eval": 6.0}))
    path = write_report(job, tasks, {"wall_s": 120.0, "prepare_s": 0.0})
    text = path.read_text()
    assert "| one_forcing_framewise | 200 | 3 | 51.00 ± " in text
    assert "**(e)" in text and "supported: ASD's gap is ≈ 0" in text
    assert "(a)" in text and "not run (the report has no self_forcing_1step)" in text
    for fig in ("totals.png", "logit_gap.png", "curves_one_forcing_framewise.png"):
        assert (tmp_path / "r" / fig).stat().st_size > 1000


@pytest.mark.slow
def test_quick_report_end_to_end(tmp_path):
    """Every method and reference through the real recipes (4 iterations, 8 videos), then the report."""
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "-m", "oneforcing", "run", str(ROOT / "recipes/toy/report_quick.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "runs/toy_report_quick/report.md").read_text()
    for label in ("One-Forcing framewise, 1 step", "Self Forcing, 4 steps", "reference: toy teacher"):
        assert label in text
    assert text.count("no verdict (one seed)") >= 5
    # A second run finds every task finished and only rewrites the report.
    proc = subprocess.run([sys.executable, "-m", "oneforcing", "run", str(ROOT / "recipes/toy/report_quick.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "cached" in proc.stdout + proc.stderr
