"""The live page's web app (FastAPI, served by uvicorn from the `serve` job).

Routes: `/` the page; `/api/stream?prompt=..&seed=..` an endless video as server-sent events (one
`frame` event per frame: its number, PNG as base64, the prompt it was generated under, generator
seconds per frame; first a `hello` event with the stream's id); `/api/prompt` (POST {stream,
prompt}) switches a stream's prompt from its next block on; `/api/status` the open streams.
Server-sent events need no WebSocket library (uvicorn's WebSockets need one more dependency). A
stream ends when its tab closes (the disconnect is seen before the next block), or after
`max_seconds`; frames are paced to `fps` (the video's rate) unless `pace` is off. At most
MAX_STREAMS streams are open at once.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from oneforcing.serve.engine import MAX_PROMPT, Engine, Stream


class PromptIn(BaseModel):
    stream: int
    prompt: str


def clean_prompt(raw: str) -> str:
    prompt = " ".join(raw.split())
    if not prompt or len(prompt) > MAX_PROMPT:
        raise HTTPException(400, f"a prompt is 1 to {MAX_PROMPT} characters")
    return prompt


MAX_STREAMS = 8  # open at once: each holds a KV cache and takes its turn on the one model


def create_app(engine: Engine, *, fps: int = 16, pace: bool = True, max_seconds: float = 600.0,
               default_prompt: str = "") -> FastAPI:
    app = FastAPI(title="oneforcing serve", docs_url=None, redoc_url=None, openapi_url=None)
    page = (Path(__file__).with_name("page.html").read_text(encoding="utf-8")
            .replace("{{PROMPT}}", json.dumps(default_prompt)).replace("{{FPS}}", str(fps)))
    streams: dict[int, Stream] = {}
    ids = itertools.count(1)
    served = {"streams": 0, "frames": 0}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/status")
    def status() -> dict:
        return {"open_streams": len(streams), **served}

    @app.post("/api/prompt")
    def post_prompt(body: PromptIn) -> dict:
        stream = streams.get(body.stream)
        if stream is None:
            raise HTTPException(404, "no such stream (closed?)")
        stream.set_prompt(clean_prompt(body.prompt))
        return {"stream": body.stream, "from_frame": stream.frames}

    @app.get("/api/stream")
    async def stream(request: Request, prompt: str, seed: int = Query(0, ge=0, lt=2**62)) -> StreamingResponse:
        prompt = clean_prompt(prompt)
        if len(streams) >= MAX_STREAMS:
            raise HTTPException(429, f"{MAX_STREAMS} streams are open: close a tab")
        sid = next(ids)
        live = await run_in_threadpool(engine.open, prompt, seed)
        streams[sid] = live
        served["streams"] += 1

        async def events():
            start = time.perf_counter()
            try:
                yield f"event: hello\ndata: {json.dumps({'stream': sid})}\n\n"
                while time.perf_counter() - start < max_seconds and not await request.is_disconnected():
                    for frame in await run_in_threadpool(live.next_frames):
                        if pace:  # a frame every 1/fps seconds from the first on
                            wait = start + frame.index / fps - time.perf_counter()
                            if wait > 0:
                                await asyncio.sleep(wait)
                        data = {"n": frame.index, "prompt": frame.prompt, "gen_s": frame.gen_seconds,
                                "png": base64.b64encode(frame.png).decode()}
                        served["frames"] += 1
                        yield f"event: frame\ndata: {json.dumps(data)}\n\n"
            finally:
                streams.pop(sid, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
