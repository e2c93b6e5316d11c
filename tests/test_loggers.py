import json

from oneforcing.loggers import build_loggers


def test_jsonl_and_console_sinks(tmp_path):
    loggers = build_loggers(["console", {"type": "jsonl"}], rank=0)
    loggers.start(str(tmp_path), {"lr": 1}, total_steps=4)
    for step in range(1, 5):
        loggers.log(step, {"loss": 1.0 / step, "bad": float("nan")})
    loggers.close()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["loss"] == 0.5 and rows[0]["bad"] is None  # NaN is written as null, valid JSON


def test_jsonl_appends_across_resumes_and_restarts(tmp_path):
    # Nothing is ever dropped: a resumed run (or a run restarted from step 0) appends; the plot
    # reader takes a step's last line.
    loggers = build_loggers(["jsonl"], rank=0)
    loggers.start(str(tmp_path), {}, total_steps=10)
    for step in range(1, 7):
        loggers.log(step, {"loss": float(step)})
    loggers.close()
    resumed = build_loggers(["jsonl"], rank=0)
    resumed.start(str(tmp_path), {}, total_steps=10, start_step=4)
    resumed.log(5, {"loss": 50.0})
    resumed.close()
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [*[(s, float(s)) for s in range(1, 7)], (5, 50.0)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill -9
    restarted = build_loggers(["jsonl"], rank=0)
    restarted.start(str(tmp_path), {}, total_steps=10, start_step=0)
    restarted.log(1, {"loss": 10.0})
    restarted.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 9 and json.loads(lines[-1])["loss"] == 10.0
    from oneforcing.jobs.plot import read_metrics

    steps, values = read_metrics(tmp_path)["loss"]
    assert steps == [1, 2, 3, 4, 5, 6] and values == [10.0, 2.0, 3.0, 4.0, 50.0, 6.0]


def test_other_ranks_log_nothing(tmp_path):
    loggers = build_loggers(["jsonl"], rank=1)
    loggers.start(str(tmp_path), {}, total_steps=1)
    loggers.log(1, {"loss": 1.0})
    loggers.close()
    assert not (tmp_path / "metrics.jsonl").exists()
