"""`sd-core serve` with an SDXL checkpoint (the existing server tests' SDXL variant): txt2img, img2img with a mask,
progress and interrupt, and switching between an SD1 and an SDXL model in one server."""

from __future__ import annotations

import json
import shutil

import pytest
from sdxl_fixtures import write_sdxl_checkpoint
from server_utils import SIZE, open_b64, png_b64, sample_image, start_server, tiny_checkpoint, wait_until

from sd_core.client import SDClient
from sd_core.pnginfo import parse_parameters

pytestmark = pytest.mark.server

BASE = {"width": SIZE, "height": SIZE, "steps": 3, "cfg_scale": 5.0, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_sdxl") / "models"
    tiny_checkpoint(root / "sd1.safetensors")
    shutil.copy(write_sdxl_checkpoint(root.parent / "build" / "xl.safetensors"), root / "xl.safetensors")
    refiner = write_sdxl_checkpoint(root.parent / "build" / "refiner.safetensors", refiner=True)
    shutil.copy(refiner, root / "refiner.safetensors")
    return root


@pytest.fixture(scope="module")
def client(models):
    server = start_server(models / "xl.safetensors", models_dir=models)
    yield SDClient(server.url, timeout=120)
    server.stop()


def info_of(result: dict) -> dict:
    return json.loads(result["info"])


def test_txt2img_with_sdxl(client):
    client.set_options({"sd_model_checkpoint": "xl.safetensors"})
    result = client.txt2img({**BASE, "prompt": "a red brick wall", "seed": 3, "batch_size": 2})
    assert len(result["images"]) == 2 and open_b64(result["images"][0]).size == (SIZE, SIZE)
    params = parse_parameters(info_of(result)["infotexts"][1])
    assert params["Seed"] == "4" and params["Model"] == "xl"


def test_img2img_with_mask_keeps_outside(client):
    client.set_options({"sd_model_checkpoint": "xl.safetensors"})
    init = sample_image()
    mask = init.convert("L").point(lambda _: 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))
    payload = {**BASE, "prompt": "a wall", "seed": 7, "denoising_strength": 0.9, "init_images": [png_b64(init)],
               "mask": png_b64(mask), "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False}  # fmt: skip
    out = open_b64(client.img2img(payload)["images"][0]).convert("RGB")
    right = (SIZE // 2 + 4, 0, SIZE, SIZE)
    assert out.crop(right).tobytes() == init.crop(right).tobytes()
    assert out.crop((0, 0, SIZE // 2 - 4, SIZE)).tobytes() != init.crop((0, 0, SIZE // 2 - 4, SIZE)).tobytes()


def test_progress_then_interrupt(client):
    client.set_options({"sd_model_checkpoint": "xl.safetensors"})
    job = client.submit("txt2img", {**BASE, "prompt": "slow", "seed": 11, "steps": 150})
    wait_until(lambda: client.progress()["state"]["sampling_step"] >= 2, timeout=120, what="sampling to start")
    client.interrupt()
    assert job.wait(60) and job.error is None, job.error
    assert info_of(job.result)["interrupted"] is True


def test_switching_between_sd1_and_sdxl(client):
    images = {}
    for name in ("sd1.safetensors", "xl.safetensors", "sd1.safetensors"):
        client.set_options({"sd_model_checkpoint": name})
        result = client.txt2img({**BASE, "prompt": "a wall", "seed": 8})
        assert info_of(result)["sd_model_name"].startswith(name.split(".")[0])
        images.setdefault(name, []).append(open_b64(result["images"][0]).convert("RGB").tobytes())
    assert images["sd1.safetensors"][0] == images["sd1.safetensors"][1]
    assert images["sd1.safetensors"][0] != images["xl.safetensors"][0]


def test_refiner_checkpoint_and_switch(client):
    client.set_options({"sd_model_checkpoint": "xl.safetensors"})
    plain = client.txt2img({**BASE, "prompt": "a wall", "seed": 9, "steps": 6})
    refined = client.txt2img({**BASE, "prompt": "a wall", "seed": 9, "steps": 6,
                              "refiner_checkpoint": "refiner.safetensors", "refiner_switch_at": 0.3})  # fmt: skip
    params = parse_parameters(info_of(refined)["infotexts"][0])
    assert params["Refiner"] == "refiner" and params["Refiner switch at"] == "0.3"
    assert "refiner_switch_at" not in info_of(refined).get("ignored_fields", [])
    assert open_b64(refined["images"][0]).tobytes() != open_b64(plain["images"][0]).tobytes()
