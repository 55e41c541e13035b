"""A batch job is the server's request (issue 39: "validated by the same code"): for the same bodies, the PNG bytes and
infotexts `sd-core batch` writes are the ones a running `sd-core serve` returns, txt2img and img2img alike, with
batches, n_iter, hires fix, an inpainting mask, an infotext and an ignored extra-network tag."""

from __future__ import annotations

import base64
import io
import json

import pytest
from batch_jobs import manifest_rows, write_jobs
from PIL import Image
from server_utils import SERVER_THREADS, start_server

import sd_core
from sd_core.batch.checks import BatchConfig
from sd_core.batch.command import run_batch
from sd_core.client import SDClient

pytestmark = pytest.mark.server

BASE = {"steps": 2, "width": 64, "height": 64, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def client():
    server = start_server(None)  # the built-in model, as the batch's default
    yield SDClient(server.url, timeout=180)
    server.stop()


def test_batch_images_are_the_servers_bytes(client, tmp_path):
    Image.new("RGB", (64, 64), (180, 60, 40)).save(tmp_path / "wall.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    jobs = [
        ("txt2img", {**BASE, "prompt": "red bricks <hypernet:foo:1>", "seed": 11, "batch_size": 2, "n_iter": 2}),
        ("txt2img", {**BASE, "prompt": "blue tiles", "seed": 12, "enable_hr": True, "hr_scale": 1.5}),
        ("txt2img", {"infotext": "green dots\nSteps: 2, Sampler: DPM++ 2M, Seed: 13, Size: 64x64, CFG scale: 4"}),
        ("img2img", {**BASE, "prompt": "a wall", "seed": 14, "init_images": ["wall.png"], "denoising_strength": 0.6}),
        ("img2img", {**BASE, "prompt": "moss", "seed": 15, "init_images": ["wall.png"], "mask": "mask.png"}),
    ]
    path = write_jobs(tmp_path / "jobs.jsonl", [body for _, body in jobs])
    config = BatchConfig(model=sd_core.builtin_model(), device="cpu", threads=SERVER_THREADS)
    result = run_batch(path, tmp_path / "out", config, stream=io.StringIO())
    assert result.failures == []
    rows = manifest_rows(tmp_path / "out")
    for line, (kind, body) in enumerate(jobs, start=1):
        sent = dict(body)
        for name in ("init_images", "mask"):
            if name in sent:  # the client sends the file's bytes as base64
                files = sent[name] if isinstance(sent[name], list) else [sent[name]]
                encoded = [base64.b64encode((tmp_path / f).read_bytes()).decode() for f in files]
                sent[name] = encoded if isinstance(sent[name], list) else encoded[0]
        answer = getattr(client, kind)(sent)
        served = [base64.b64decode(image) for image in answer["images"]]
        mine = sorted((r for r in rows if r["line"] == line), key=lambda r: r["index"])
        assert len(mine) == len(served) == (4 if line == 1 else 1)
        assert [(tmp_path / "out" / r["path"]).read_bytes() for r in mine] == served, f"line {line}"
        assert [r["infotext"] for r in mine] == json.loads(answer["info"])["infotexts"]
