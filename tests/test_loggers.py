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


def test_jsonl_resume_drops_lines_after_the_resume_point(tmp_path):
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
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0)]


def test_other_ranks_log_nothing(tmp_path):
    loggers = build_loggers(["jsonl"], rank=1)
    loggers.start(str(tmp_path), {}, total_steps=1)
    loggers.log(1, {"loss": 1.0})
    loggers.close()
    assert not (tmp_path / "metrics.jsonl").exists()
