"""The toy world's registered jobs: toy_data (data.py), toy_eval (eval.py), eval (score.py: ToyBench
on a folder of videos) and toy_report (report.py, with report_doc.py, report_claims.py, report_stats.py
and report_provenance.py)."""

from oneforcing.toy.jobs import data, eval, report, score  # noqa: F401
