"""`sd-core batch --controlnet-dir`: a job's ControlNet unit (the extension's `alwayson_scripts.controlnet` shape, its
image a file path beside the JOBS file) gives the Python API's image for the same net and control image, and a unit
naming a net the folder lacks fails that job naming the field, as the server answers."""

from __future__ import annotations

import io

import numpy as np
import torch
from batch_jobs import THREADS, manifest_rows, write_jobs
from controlnet_fixtures import write_controlnet_file
from PIL import Image
from server_utils import SIZE, tiny_checkpoint

import sd_core
from sd_core.batch.checks import BatchConfig
from sd_core.batch.command import run_batch

BODY = {"prompt": "a stone wall", "width": SIZE, "height": SIZE, "steps": 3, "seed": 21, "cfg_scale": 6.0,
        "sampler_name": "Euler"}  # fmt: skip


def lines_drawing() -> Image.Image:
    arr = np.full((SIZE, SIZE, 3), 255, np.uint8)
    arr[20:26, :] = 0
    arr[:, 40:44] = 0
    return Image.fromarray(arr)


def test_a_controlnet_unit_with_a_file_path_gives_the_python_api_image(tmp_path):
    model = tiny_checkpoint(tmp_path / "models" / "tiny.safetensors")
    net_path = write_controlnet_file(tmp_path / "ControlNet" / "control_tiny.safetensors")
    lines_drawing().save(tmp_path / "lines.png")
    unit = {"image": "lines.png", "model": "control_tiny", "module": "none", "weight": 0.8, "guidance_end": 0.7}
    jobs = [
        {**BODY, "alwayson_scripts": {"controlnet": {"args": [unit]}}},
        {**BODY, "alwayson_scripts": {"controlnet": {"args": [{**unit, "model": "control_missing"}]}}},
        BODY,
    ]
    config = BatchConfig(model=model, device="cpu", controlnet_dir=tmp_path / "ControlNet", threads=THREADS)
    result = run_batch(write_jobs(tmp_path / "jobs.jsonl", jobs), tmp_path / "out", config, stream=io.StringIO())

    assert [f.line for f in result.failures] == [2]
    assert "alwayson_scripts.controlnet.args[0].model" in result.failures[0].message
    rows = {r["line"]: r for r in manifest_rows(tmp_path / "out")}
    made = {line: np.asarray(Image.open(tmp_path / "out" / rows[line]["path"]).convert("RGB"), np.float64)
            for line in (1, 3)}  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        pipe = sd_core.load(model, device="cpu")
        net = sd_core.load_controlnet(net_path, "cpu", pipe.dtype)
        kw = dict(width=SIZE, height=SIZE, steps=3, seed=21, cfg_scale=6.0, sampler="Euler")
        control = sd_core.Control(net, lines_drawing(), strength=0.8, end=0.7, steps="a1111")
        with_net = np.asarray(pipe.txt2img("a stone wall", control=[control], **kw)[0], np.float64)
        without = np.asarray(pipe.txt2img("a stone wall", **kw)[0], np.float64)
    finally:
        torch.set_num_threads(threads)
    assert np.abs(made[1] - with_net).max() == 0
    assert np.abs(made[3] - without).max() == 0
    assert np.abs(with_net - without).mean() > 1.0  # the unit changed the image
    assert 'ControlNet 0: "Module: none, Model: control_tiny' in rows[1]["infotext"]


def test_a_changed_control_image_is_a_new_job(tmp_path):
    from sd_core.batch.naming import job_hash
    from sd_core.batch.sources import read_jobs

    lines_drawing().save(tmp_path / "lines.png")
    unit = {"image": {"image": "lines.png"}, "model": "control_tiny"}
    path = write_jobs(tmp_path / "jobs.jsonl", [{**BODY, "alwayson_scripts": {"controlnet": {"args": [unit]}}}])
    (job,) = read_jobs(path)
    assert job.body["alwayson_scripts"]["controlnet"]["args"][0]["image"]["image"] == str(tmp_path / "lines.png")
    before = job_hash(job)
    Image.new("RGB", (SIZE, SIZE), (0, 0, 0)).save(tmp_path / "lines.png")
    assert job_hash(job) != before
