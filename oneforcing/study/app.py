"""The study's web app (FastAPI, served by uvicorn from the `study` job).

Routes: `/` the page; `/api/state`, `/api/annotator`, `/api/vote` its JSON API; `/video/{pair}/{side}`
the two clips of a pair; `/export.md`, `/export.csv` Table 2. A video is looked up by pair id in a
table built from the checked design -- no URL carries a path, so nothing outside the given folders
can be reached -- and each file is checked again (still directly inside its folder) when served.
Clip URLs and the page name no system: annotators are blind to which side is which.
"""

from __future__ import annotations

import html
import math
import os
import unicodedata
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel

from oneforcing.study import QUESTION
from oneforcing.study.design import StudyDesign
from oneforcing.study.report import csv_text, markdown
from oneforcing.study.store import StudyStore

MAX_NAME = 64


class AnnotatorIn(BaseModel):
    name: str


class VoteIn(BaseModel):
    name: str
    pair_id: int
    choice: Literal["left", "right", "tie"]


def clean_name(raw: str) -> str:
    """An annotator's name as stored: NFC, trimmed, 1..64 printable characters."""
    name = unicodedata.normalize("NFC", raw).strip()
    if not name or len(name) > MAX_NAME or any(unicodedata.category(c).startswith("C") for c in name):
        raise HTTPException(400, f"a name is 1 to {MAX_NAME} printable characters")
    return name


def video_table(store: StudyStore, design: StudyDesign) -> dict[tuple[int, str], tuple[Path, Path]]:
    """(pair id, side) -> (file, the folder it must stay in)."""
    table = {}
    for pid, pair in store.pairs.items():
        for side, system in (("left", pair.left), ("right", pair.right)):
            table[(pid, side)] = (design.video(system, pair.prompt, pair.sample), design.systems[system])
    return table


def create_app(store: StudyStore, design: StudyDesign) -> FastAPI:
    app = FastAPI(title="oneforcing study", docs_url=None, redoc_url=None, openapi_url=None)
    page = (Path(__file__).with_name("page.html").read_text(encoding="utf-8")
            .replace("{{QUESTION}}", html.escape(QUESTION)))
    videos = video_table(store, design)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body that does not fit the API: 422 naming each field, without echoing its value (the
        default echoes it, and a NaN or Infinity in a JSON body then fails to serialise: a 500)."""
        errors = exc.errors()
        if any(isinstance(e.get("input"), float) and not math.isfinite(e["input"]) for e in errors):
            return JSONResponse({"detail": "NaN and Infinity are not JSON numbers"}, status_code=400)
        return JSONResponse({"detail": [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg"))}
                                        for e in errors]}, status_code=422)

    def state(name: str) -> dict:
        pair, rated = store.next_pair(name)
        shown = None if pair is None else {"id": pair.id, "prompt": pair.prompt,
                                           "left": f"/video/{pair.id}/left", "right": f"/video/{pair.id}/right"}
        return {"name": name, "rated": rated, "total": len(store.pairs), "done": pair is None, "pair": shown}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/state")
    def get_state(name: str) -> dict:
        return state(clean_name(name))

    @app.post("/api/annotator")
    def post_annotator(body: AnnotatorIn) -> dict:
        name = clean_name(body.name)
        store.add_annotator(name)
        return state(name)

    @app.post("/api/vote")
    def post_vote(body: VoteIn) -> dict:
        name = clean_name(body.name)
        if body.pair_id not in store.pairs:
            raise HTTPException(404, "no such pair")
        store.add_annotator(name)
        recorded = store.vote(name, body.pair_id, body.choice)
        return {"recorded": recorded, **state(name)}

    @app.get("/video/{pair_id}/{side}")
    def video(pair_id: int, side: Literal["left", "right"]) -> FileResponse:
        entry = videos.get((pair_id, side))
        if entry is None:
            raise HTTPException(404, "no such video")
        path, folder = entry
        if Path(os.path.realpath(path)).parent != folder or not path.is_file():
            raise HTTPException(404, "no such video")  # replaced by a link out of its folder since start-up
        return FileResponse(path, media_type="video/mp4")

    @app.get("/export.md", response_class=PlainTextResponse)
    def export_md() -> str:
        return markdown(store)

    @app.get("/export.csv", response_class=PlainTextResponse)
    def export_csv() -> str:
        return csv_text(store)

    return app
