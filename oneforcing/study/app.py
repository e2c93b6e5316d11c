"""The study's web app (FastAPI, served by uvicorn from the `study` job).

Routes: `/` the page; `/api/state`, `/api/enrol`, `/api/consent`, `/api/vote` its JSON API;
`/video/{slot}/{side}?t=TOKEN` the two clips of the annotator's current pair; `/export/{file}?owner=TOKEN`
the results, for the owner's token only until the study is closed.

Annotators are known by a token (a roster's links; without a roster, enrolling by name gives one).
A clip is looked up from the annotator's own sequence and sides -- no URL names a system or a path,
so nothing outside the given folders can be reached -- and each file is checked again (still directly
inside its folder) when served. Nothing about a response tells the systems apart: no ETag or
Last-Modified, and both clips of a pair are padded (an mp4 `free` box) to one length.
"""

from __future__ import annotations

import hmac
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from oneforcing.study import QUESTION
from oneforcing.study.design import StudyDesign
from oneforcing.study.protocol import annotator_key, annotator_token, completion_code, owner_token
from oneforcing.study.report import analyse, annotators_csv, markdown, table_csv, votes_csv, votes_jsonl
from oneforcing.study.store import StudyStore

PAD = 4096
Finite = Annotated[float, Field(allow_inf_nan=False, ge=0)]  # clips of a pair are padded to one multiple of this


class EnrolIn(BaseModel):
    name: str


class TokenIn(BaseModel):
    t: str


class VoteIn(BaseModel):
    t: str
    slot: int
    choice: Literal["left", "right", "tie"]
    client_ms: Finite | None = None
    watched_left: Finite | None = None
    watched_right: Finite | None = None


def padded_length(sizes) -> int:
    return -(-(max(sizes) + 8) // PAD) * PAD  # room for a free box's 8-byte header at least


def padded_clip(path: Path, length: int) -> bytes:
    """The file's bytes and a trailing mp4 `free` box (players skip it) up to `length` bytes."""
    data = path.read_bytes()
    pad = length - len(data)
    return data + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a `Range: bytes=a-b` header (one range), None for the whole body."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if not first:
            return max(0, size - int(last)), size - 1
        return int(first), min(size - 1, int(last)) if last else size - 1
    except ValueError:
        return None


def create_app(store: StudyStore, design: StudyDesign, roster: list[str] | None = None) -> FastAPI:
    app = FastAPI(title="oneforcing study", docs_url=None, redoc_url=None, openapi_url=None)
    page = Path(__file__).with_name("page.html").read_text(encoding="utf-8")
    proto, secret = store.protocol, store.secret
    owner_secret = owner_token(secret)
    tokens = {annotator_token(secret, a): a for a in (roster if roster is not None else store.annotators())}
    sequences: dict[str, list] = {}

    @app.middleware("http")
    async def no_caching(request: Request, call_next):
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"  # page URLs carry tokens
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body that does not fit the API: 422 naming each field, without echoing its value (the
        default echoes it, and a NaN or Infinity in a JSON body then fails to serialise: a 500)."""
        errors = exc.errors()
        if any(isinstance(e.get("input"), float) and not math.isfinite(e["input"]) for e in errors):
            return JSONResponse({"detail": "NaN and Infinity are not JSON numbers"}, status_code=400)
        return JSONResponse({"detail": [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg"))}
                                        for e in errors]}, status_code=422)

    def who(token: str) -> str:
        annotator = tokens.get(token)
        if annotator is None:
            raise HTTPException(403, "unknown annotator link: use the link you were given")
        return annotator

    def sequence(annotator: str) -> list:
        if annotator not in sequences:
            sequences[annotator] = store.sequence(annotator)
        return sequences[annotator]

    def state(annotator: str, token: str, status: str | None = None) -> dict:
        store.add_annotator(annotator)
        slot, rated = store.next_slot(annotator)
        out = {"annotator": annotator, "token": token, "rated": rated, "total": len(sequence(annotator)),
               "done": slot is None, "consented": store.consented(annotator), "instructions": proto.instructions,
               "question": QUESTION, "lock_ms": round(1000 * proto.lock_s), "closed": store.closed(),
               "status": status, "pair": None, "code": None, "enrol": roster is None}
        if slot is None:
            out["code"] = completion_code(secret, annotator)
        elif out["consented"]:
            store.show(annotator, slot)
            pair = store.pairs[sequence(annotator)[slot][0]]
            out["pair"] = {"slot": slot, "prompt": pair.prompt, "left": f"/video/{slot}/left?t={token}",
                           "right": f"/video/{slot}/right?t={token}"}
        return out

    def clip_path(annotator: str, slot: int, side: str) -> tuple[Path, Path]:
        pair_id, repeat = sequence(annotator)[slot]
        pair = store.pairs[pair_id]
        left, right = store.sides(annotator, pair_id, repeat)
        path = design.video(left if side == "left" else right, pair.prompt, pair.sample)
        if Path(os.path.realpath(path)).parent != design.folder(left if side == "left" else right) \
                or not path.is_file():
            raise HTTPException(404, "no such video")  # replaced by a link out of its folder since start-up
        return path, design.video(right if side == "left" else left, pair.prompt, pair.sample)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/state")
    def get_state(t: str) -> dict:
        return state(who(t), t)

    @app.post("/api/enrol")
    def enrol(body: EnrolIn) -> dict:
        if roster is not None:
            raise HTTPException(403, "this study has a roster: use the link you were given")
        try:
            annotator = annotator_key(body.name)
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        token = annotator_token(secret, annotator)
        tokens[token] = annotator
        return state(annotator, token)

    @app.post("/api/consent")
    def consent(body: TokenIn) -> dict:
        annotator = who(body.t)
        store.add_annotator(annotator)
        store.consent(annotator)
        return state(annotator, body.t)

    @app.post("/api/vote")
    def post_vote(body: VoteIn) -> dict:
        annotator = who(body.t)
        if not 0 <= body.slot < len(sequence(annotator)):
            raise HTTPException(404, "no such pair")
        if store.closed():
            raise HTTPException(403, "the study is closed")
        clamp = [None if w is None else min(1.0, max(0.0, w)) for w in (body.watched_left, body.watched_right)]
        status = store.vote(annotator, body.slot, body.choice, body.client_ms, tuple(clamp),
                            min_ms=500 * proto.lock_s)  # half the page's lock: the network's share of it
        if status in ("not shown", "too early"):
            raise HTTPException(409, f"vote refused: {status}")
        return state(annotator, body.t, status)

    @app.get("/video/{slot}/{side}")
    def video(slot: int, side: Literal["left", "right"], t: str, request: Request) -> Response:
        annotator = who(t)
        if slot != store.next_slot(annotator)[0]:
            raise HTTPException(404, "no such video")  # only the pair the annotator is rating now
        path, other = clip_path(annotator, slot, side)
        body = padded_clip(path, padded_length([path.stat().st_size, other.stat().st_size]))
        span = byte_range(request.headers.get("range"), len(body))
        headers = {"Accept-Ranges": "bytes"}
        if span is None:
            return Response(body, media_type="video/mp4", headers=headers)
        first, last = span
        if first > last or first >= len(body):
            return Response(status_code=416, headers={"Content-Range": f"bytes */{len(body)}"})
        headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        return Response(body[first:last + 1], status_code=206, media_type="video/mp4", headers=headers)

    exports = {"table2.md": lambda: markdown(analyse(store)), "table2.csv": lambda: table_csv(analyse(store)),
               "annotators.csv": lambda: annotators_csv(analyse(store)), "votes.csv": lambda: votes_csv(store),
               "votes.jsonl": lambda: votes_jsonl(store)}

    @app.get("/export/{name}", response_class=PlainTextResponse)
    def export(name: str, owner: str = "") -> str:
        if name not in exports:
            raise HTTPException(404, "no such export")
        if not hmac.compare_digest(owner.encode(), owner_secret.encode()) and not store.closed():
            raise HTTPException(403, "results are for the study's owner until the study is closed")
        return exports[name]()

    return app
