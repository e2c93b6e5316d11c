"""A pairwise human-preference study (the paper's Table 2) as a local web app.

design.py    the study from folders of `{prompt}-{i}.mp4` and a prompt file: pairs, file checks
protocol.py  the study file's protocol (instructions, roster, checks, exclusion rules) and tokens
media.py     every clip decoded and matched within its pair; the attention checks' degraded clips
store.py     SQLite: the committed design and protocol, each annotator's order and sides, the votes
stats.py     Wilson, the annotator x prompt bootstrap, Krippendorff's alpha, Fleiss' kappa, Bradley-Terry
report.py    Table 2 (% wins / ties / losses), agreement, per-annotator table and exclusions, raw votes
app.py       the FastAPI app (page.html, the JSON API, clips by slot and side only, owner-only results)

The jobs `study` and `study_report` (oneforcing/jobs/study.py) are the entry points.
"""

QUESTION = ("Which video is better overall, considering visual quality, motion realism, temporal consistency, "
            "and prompt alignment?")
CHOICES = ("left", "right", "tie")
