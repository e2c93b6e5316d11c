"""The live page's server without a browser (runs where Chromium is absent): its refusals, a
bounded stream's frames, a switch taking effect at the next block, and the PNGs it sends."""

import struct
import zlib

import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from oneforcing.config.assets import packaged_asset  # noqa: E402
from oneforcing.errors import UserError  # noqa: E402
from oneforcing.jobs.base import RunContext  # noqa: E402
from oneforcing.jobs.serve import ServeJob  # noqa: E402
from oneforcing.serve.engine import png_bytes  # noqa: E402

RED = "a large red circle moving right slowly on a black background"
BLUE = "a large blue square moving up slowly on a white background"


@pytest.fixture(scope="module")
def job():
    return ServeJob(checkpoint=str(packaged_asset("toy_causal_ode_init")), pace=False, max_seconds=0.3)


def test_api(job):
    client = TestClient(job.create_app(RunContext()))
    assert client.get("/api/stream", params={"prompt": RED, "seed": -1}).status_code == 422
    assert client.get("/api/stream", params={"prompt": "  "}).status_code == 400
    assert client.post("/api/prompt", json={"stream": 99, "prompt": BLUE}).status_code == 404
    body = client.get("/api/stream", params={"prompt": RED}).text  # ends after max_seconds
    assert body.startswith("event: hello") and body.count("event: frame") >= 2 and RED in body
    assert client.get("/api/status").json()["open_streams"] == 0  # closed when it ended
    assert "oneforcing live" in client.get("/").text


def test_switch_at_the_next_block_and_pngs(job):
    engine = job.build_engine(RunContext())
    stream = engine.open(RED, seed=0)
    first = stream.next_frames() + stream.next_frames()
    stream.set_prompt(BLUE)
    after = stream.next_frames()
    assert [f.prompt for f in first] == [RED, RED] and [f.prompt for f in after] == [BLUE]
    assert [f.index for f in first + after] == [0, 1, 2]
    assert stream.live.switches == [2]  # re-cached at latent frame 2
    png = after[0].png
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (32, 32)
    frame = torch.rand(3, 4, 5) * 2 - 1
    raw = zlib.decompress(png_bytes(frame)[41:-16])  # IDAT payload (before its CRC and IEND): a filter byte per row
    rows = torch.tensor(list(raw), dtype=torch.uint8).reshape(4, 1 + 5 * 3)[:, 1:].reshape(4, 5, 3)
    assert torch.equal(rows.permute(2, 0, 1), ((frame + 1) * 127.5).round().to(torch.uint8))


def test_serve_refuses_an_unbounded_cache():
    with pytest.raises(UserError, match="bounded cache") as err:
        ServeJob(checkpoint="x", sampler={"type": "causal_inference"})
    assert err.value.key == "sampler"
