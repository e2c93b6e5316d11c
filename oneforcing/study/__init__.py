"""A pairwise human-preference study (the paper's Table 2) as a local web app.

design.py  the study from folders of `{prompt}-{i}.mp4` and a prompt file: pairs, sides, checks
store.py   SQLite: the committed design (prompt-file hash, video hashes, pairs) and the votes
report.py  Table 2 from the votes: wins / ties / losses / decided / win rate with a Wilson interval
app.py     the FastAPI app (page.html, the JSON API, videos served by pair id only)

The jobs `study` and `study_report` (oneforcing/jobs/study.py) are the entry points.
"""

QUESTION = ("Which video is better overall, considering visual quality, motion realism, temporal consistency, "
            "and prompt alignment?")
CHOICES = ("left", "right", "tie")
