"""The toy report job: its contracts (config keys, plan, cache keys and provenance, the runs
lock), the report text from finished tasks; and (slow) the quick report end to end. The statistics
and the wording of verdicts: tests/test_toy_report_stats.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneforcing.errors import UserError
from oneforcing.toy.jobs import report_provenance
from oneforcing.toy.jobs.report import LOCK, Task, ToyReport
from oneforcing.toy.jobs.report_doc import write_report
from oneforcing.toy.jobs.report_provenance import RunsLock, provenance

ROOT = Path(__file__).resolve().parents[1]


def _result(total, dyn=0.3, subj=0.5, weights="raw"):
    return {"num_videos": 8, "weights": weights, "total": total, "quality": total, "semantic": total,
            "raw": {"dynamic_degree": dyn, "subject_consistency": subj, "count": 0.5, "shape": 0.3,
                    "direction": 0.2}}


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
                                     ({"prepare": [{"recipe": "data.yaml", "typo": 1}]}, "prepare[0]"),
                                     ({"alpha": 1.0}, "alpha"), ({"equivalence_margin": 0}, "equivalence_margin"),
                                     ({"curvature": {"overrides": []}}, "curvature"),
                                     ({"references": {"t": {"seeds": [7]}}}, "references.t.seeds")])
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
    for t in tasks:   # every record says what the task was made from
        assert {"source_sha256", "assets", "code", "machine"} <= set(t.record)
        assert {"platform", "cpus", "torch"} <= set(t.record["machine"])
        assert t.record["code"]["commit"] == "uncommitted" or len(t.record["code"]["commit"]) in (7, 40) \
            or t.record["code"]["commit"] == "unknown"
    assert {"toy_causal_ode_init", "toy_teacher", "toy_student_base", "toy_codec_pca.safetensors",
            "toy_text_encoder"} <= set(tasks[0].record["assets"])


def _resolved_train(task):
    from oneforcing.jobs.base import prepare

    return prepare(*task.commands[0])[0]


def test_training_keeps_the_recipes_inference_weights(tmp_path):
    """The report moves a run's export folder, not what its recipe declares toy_eval should score."""
    job = _job(tmp_path, seeds=[0], methods={"sf": {"recipe": "self_forcing_1step.yaml"},
                                             "of": {"recipe": "one_forcing_framewise.yaml"}})
    sf, of = job.plan(ROOT / "recipes" / "toy")
    assert _resolved_train(sf)["export"] == {"dir": f"{sf.dir}/export", "inference_weights": "ema"}
    assert _resolved_train(of)["export"]["inference_weights"] == "raw"


def test_the_gan_control_is_the_framewise_recipe_with_gan_weights_zero():
    from oneforcing.jobs.base import prepare

    _, _, job = prepare(str(ROOT / "recipes/toy/report.yaml"), [])
    assert len(job.seeds) >= 5 and job.margin > 0 and job.curvature is not None
    tasks = {t.title: t for t in job.plan(ROOT / "recipes" / "toy")}
    control = _resolved_train(tasks["one_forcing_framewise_no_gan/seed0"])
    framewise = _resolved_train(tasks["one_forcing_framewise/seed0"])
    assert [(x["type"], x.get("weight")) for x in control["generator_losses"]] == [("dmd", None), ("gan_generator", 0)]
    assert [(x["type"], x.get("weight")) for x in control["critic_losses"]] == [("flow_denoise", None),
                                                                               ("gan_discriminator", 0)]
    for cfg in (control, framewise):
        for key in ("generator_losses", "critic_losses", "run_dir", "export"):
            cfg.pop(key)
    assert control == framewise


def test_provenance_key_follows_code_assets_and_recipes(monkeypatch):
    teacher = str(report_provenance.ASSETS / "toy_teacher")
    key, record = provenance([{"model": teacher}])
    assert list(record["assets"]) == ["toy_teacher"]
    assert provenance([{"model": teacher}])[0] == key
    assert provenance([{"model": teacher, "steps": 2}])[0] != key            # the recipe
    monkeypatch.setattr(report_provenance, "source_hash", lambda: "other code")
    assert provenance([{"model": teacher}])[0] != key                        # the sources
    monkeypatch.undo()
    monkeypatch.setattr(report_provenance, "asset_hash", lambda name: "other weights")
    assert provenance([{"model": teacher}])[0] != key                        # the asset's bytes
    monkeypatch.undo()
    monkeypatch.setattr(report_provenance, "code_version", lambda: {"commit": "f" * 40})
    assert provenance([{"model": teacher}])[0] == key                        # not the commit: recorded only


def test_source_hash_covers_the_package_but_not_the_report_writer():
    files = {f.relative_to(report_provenance.PACKAGE).as_posix() for f in report_provenance.PACKAGE.rglob("*.py")}
    assert set(report_provenance.REPORT_ONLY) <= files     # every left-out name is a real file
    assert "losses/dmd.py" in files


def test_runs_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path):
    path = tmp_path / "runs" / LOCK
    with RunsLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"{path} is held by pid {os.getpid()}"):
            RunsLock(path).acquire()
    assert not path.exists()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    path.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    with RunsLock(path):       # stale: its process has exited
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_second_report_on_the_same_runs_dir_exits_2_naming_the_lock(tmp_path):
    runs = tmp_path / "runs"
    with RunsLock(runs / LOCK):
        proc = subprocess.run([sys.executable, "-m", "oneforcing", "run", str(ROOT / "recipes/toy/report_quick.yaml"),
                               f"runs_dir={runs}", f"out={tmp_path}/r.md"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(runs / LOCK) in lines[0] and str(os.getpid()) in lines[0]
    assert sorted(p.name for p in runs.iterdir()) == [] and not (tmp_path / "r.md").exists()


def test_a_folder_not_made_by_the_report_is_never_touched(tmp_path):
    job = _job(tmp_path)
    task = job.plan(ROOT / "recipes" / "toy")[0]
    task.dir.mkdir(parents=True)
    (task.dir / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by this report"):
        job.run_task(task)
    assert (task.dir / "precious.txt").read_text() == "keep"


def test_foreign_folders_damaged_records_and_a_file_as_runs_dir_stop_it_before_any_work(tmp_path):
    """Checked before the prepare stages render data: a folder the report did not make, a task.json
    that does not parse (one line, the folder kept), and a runs_dir that is a file."""
    from oneforcing.jobs.base import RunContext

    job = _job(tmp_path)
    job.prepare = None
    tasks = job.plan(ROOT / "recipes" / "toy")
    tasks[1].dir.mkdir(parents=True)
    (tasks[1].dir / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not made by this report"):
        job._run(RunContext())
    (tasks[1].dir / "precious.txt").unlink()
    (tasks[1].dir / "task.json").write_text('{"key": "abc", "sta')   # cut short
    with pytest.raises(UserError, match="task.json is unreadable .JSONDecodeError.; delete its folder"):
        job._run(RunContext())
    assert (tasks[1].dir / "task.json").exists()
    runs_file = tmp_path / "runs_file"
    runs_file.write_text("not a folder")
    with pytest.raises(UserError, match="is a file, not a folder"):
        _job(tmp_path, runs_dir=str(runs_file))._run(RunContext())


def test_a_finished_task_with_the_same_key_is_not_run_again(tmp_path):
    job = _job(tmp_path)
    task = job.plan(ROOT / "recipes" / "toy")[0]
    task.key = "abc"
    task.dir.mkdir(parents=True)
    (task.dir / "task.json").write_text(json.dumps({"key": "abc", "state": "done", "seconds": {"train": 3.0}}))
    job._call = lambda *a: pytest.fail("a cached task ran")
    assert job.run_task(task).cached and task.seconds == {"train": 3.0}


def _finished(tmp_path, name, totals, gap=None, weights="raw", kind="method"):
    tasks = []
    for seed, total in enumerate(totals):
        d = tmp_path / "runs" / name / f"seed{seed}"
        (d / "eval").mkdir(parents=True)
        (d / "eval" / "toybench.json").write_text(json.dumps(_result(total, weights=weights)))
        if gap is not None:
            rows = [{"step": s, "critic/gan_discriminator/logit_gap": gap + 0.001 * seed, "critic/loss": 1.0,
                     "generator/dmd": 0.5, "generator/step": s} for s in range(0, 40, 5)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        record = {"code": {"commit": "a" * 40}, "source_sha256": "s" * 16, "assets": {}, "machine": {}}
        tasks.append(Task(name, name, kind, seed, d, [], steps=200 if kind == "method" else None,
                          seconds={"train": 60.0, "eval": 6.0}, record=record))
    return tasks


def _curvature_task(tmp_path, masses, ratios):
    d = tmp_path / "runs" / "curvature"
    d.mkdir(parents=True)
    summary = {"mass_high": {"mean": sum(masses) / len(masses)}, "mass_high_dt": {"mean": 0.3},
               "ratio": {"mean": sum(ratios) / len(ratios)}}
    variant = {**summary, "per_prompt": {"mass_high": masses, "ratio": ratios}}
    (d / "curvature.json").write_text(json.dumps({
        "teacher": "/x/toy_teacher", "high_t": 0.9, "mid_band": [0.3, 0.7], "num_prompts": len(masses),
        "variants": {"latent": variant, "temporal_difference": variant}}))
    return Task("curvature", "teacher curvature", "curvature", None, d, [], seconds={"curvature": 30.0},
                record={"code": {"commit": "a" * 40}})


def test_report_text_from_finished_tasks(tmp_path):
    job = _job(tmp_path, methods={"one_forcing_framewise": {"recipe": "x.yaml"}, "asd_1step": {"recipe": "x.yaml"},
                                  "one_forcing_framewise_no_gan": {"recipe": "x.yaml"}},
               seeds=[0, 1, 2, 3, 4])
    spread = [0.0, 0.01, 0.02, 0.03, 0.04]
    tasks = (_finished(tmp_path, "one_forcing_framewise", [0.5 + s for s in spread], gap=1.5)
             + _finished(tmp_path, "asd_1step", [0.4 + s + 0.001 * (-1) ** k for k, s in enumerate(spread)], gap=0.001)
             + _finished(tmp_path, "one_forcing_framewise_no_gan", [0.5 + s + 0.001 * (-1) ** k
                                                                    for k, s in enumerate(spread)])
             + _finished(tmp_path, "teacher", [0.9] * 5, weights="EMA", kind="reference")
             + [_curvature_task(tmp_path, [0.6, 0.7, 0.65, 0.62, 0.68], [5.0, 7.0, 6.0, 5.5, 6.5])])
    path = write_report(job, tasks, {"wall_s": 120.0, "prepare_s": 0.0})
    text = path.read_text()
    assert "| one_forcing_framewise | raw | 200 | 5 | 52.00 ± " in text          # weights, iterations, seeds
    assert "| teacher | EMA | — | 5 | 90.00 ± 0.00 |" in text
    assert "| teacher | 0 | EMA | 90.00 |" in text                                  # per task: weights too
    assert "Holm" in text and "alpha = 0.05" in text and "margin ±2 ToyBench points" in text
    assert "tasks made at commit aaaaaaaaaaaa" in text
    assert "**(e)" in text and "supported: ASD's gap < 0.1; One-Forcing's gap > 1" in text
    assert "**(f)" in text and "supported: more than 50 % of the mass at high noise" in text
    assert "**(h) control" in text and "supported: equivalent at margin" not in text
    h = text.split("**(h)")[1].split("**(")[0]
    assert "equivalent at margin ±2 (the GAN term makes no difference beyond the margin)" in h
    assert "(a)" in text and "not run (the report has no self_forcing_1step)" in text
    assert "CD) init" in text and "Table 3 analogue" not in text
    claims_part = text.split("## The paper's claims")[1].split("## Figures")[0]
    assert "95 % interval" not in claims_part and "Holm-adjusted p" in claims_part
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
    for label in ("One-Forcing framewise, 1 step", "Self Forcing, 4 steps", "reference: the exact toy teacher"):
        assert label in text
    assert text.count("no verdict (1 seed: no test)") >= 5 and "**(h) control" in text
    assert "**(f)" in text and "not run" not in text.split("**(f)")[1].split("**(g)")[0]
    assert "| raw |" in text and "| EMA |" in text
    # A second run finds every task finished and only rewrites the report.
    proc = subprocess.run([sys.executable, "-m", "oneforcing", "run", str(ROOT / "recipes/toy/report_quick.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "cached" in proc.stdout + proc.stderr
