"""Hires fix and img2img's latent resize through real requests: A1111's fields map onto the engine's settings, and the
server's images are exactly the in-process engine's for those settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from esrgan_files import rrdb_weights, write_model
from server_utils import (
    SERVER_THREADS,
    SIZE,
    open_b64,
    png_b64,
    sample_image,
    start_server,
    tiny_checkpoint,
    wait_until,
)

import sd_core
from sd_core.client import ClientError, SDClient
from sd_core.pnginfo import parse_parameters
from sd_core.upscalers.latent import LATENT_MODES

pytestmark = pytest.mark.server

BASE = {"prompt": "a red brick wall", "width": SIZE, "height": SIZE, "steps": 3, "seed": 5, "cfg_scale": 5.0}
BASE["sampler_name"] = "Euler"
HIRES = {**BASE, "enable_hr": True, "hr_second_pass_steps": 3}  # a schedule of int(3 / 0.75) = 4 steps


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("hires") / "model.safetensors")


@pytest.fixture(scope="module")
def esrgan(tmp_path_factory) -> Path:
    """A folder with a tiny random-weight 2x ESRGAN-family model, 2x_tiny."""
    folder = tmp_path_factory.mktemp("ESRGAN")
    write_model(folder / "2x_tiny.safetensors", rrdb_weights(2))
    return folder


@pytest.fixture(scope="module")
def client(model, esrgan):
    server = start_server(model, extra_args=("--max-pixels", str(9 * SIZE * SIZE), "--upscaler-dir", str(esrgan)))
    yield SDClient(server.url, timeout=120)
    server.stop()


@pytest.fixture(scope="module")
def engine(model):
    """The server's model at the server's thread count (GEMMs over other thread counts sum in another order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        yield sd_core.load(model, device="cpu")  # as the server loads it
    finally:
        torch.set_num_threads(threads)


def images(result: dict) -> list:
    return [open_b64(text).convert("RGB") for text in result["images"]]


def info_of(result: dict) -> dict:
    return json.loads(result["info"])


def test_a_hires_request_is_the_engine_s_hires_fix(client, engine):
    result = client.txt2img({**HIRES, "hr_upscaler": "Lanczos", "denoising_strength": 0.6, "hr_prompt": "a wall"})
    [image] = images(result)
    info = info_of(result)
    assert image.size == (2 * SIZE, 2 * SIZE) and (info["width"], info["height"]) == (SIZE, SIZE)  # A1111's info
    assert "ignored_fields" not in info
    options = sd_core.HiresOptions(upscaler="Lanczos", steps=3, strength=0.6, prompt="a wall")
    [expected] = engine.txt2img(
        "a red brick wall", width=SIZE, height=SIZE, steps=3, seed=5, cfg_scale=5.0, sampler="Euler", hires=options
    )
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    params = parse_parameters(info["infotexts"][0])
    assert params["Size"] == f"{SIZE}x{SIZE}" and params["Denoising strength"] == "0.6"
    assert params["Hires upscale"] == "2.0" and params["Hires steps"] == "3" and params["Hires upscaler"] == "Lanczos"
    assert params["Hires prompt"] == "a wall"
    assert info["infotexts"][0] == expected.info["parameters"].replace("Model: model", f"Model: {params['Model']}")


def test_sd_core_tile_is_the_engine_s_tiled_seamless_second_pass(client, engine):
    """sd-core's own `sd_core_tile`: the hires second pass sampled in tiles (the engine's `tile=`), seamless with
    tiling; a tile the engine cannot use is a 422 naming it."""
    fields = {**HIRES, "hr_upscaler": "Lanczos", "denoising_strength": 0.5, "tiling": True}
    [image] = images(client.txt2img({**fields, "sd_core_tile": {"width": 64, "height": 64, "overlap": 16}}))
    options = sd_core.HiresOptions(upscaler="Lanczos", steps=3, strength=0.5)
    common = dict(width=SIZE, height=SIZE, steps=3, seed=5, cfg_scale=5.0, sampler="Euler", tiling="xy", hires=options)
    [tiled] = engine.txt2img("a red brick wall", tile=sd_core.TileOptions(64, 64, overlap=16), **common)
    [untiled] = engine.txt2img("a red brick wall", **common)
    assert np.array_equal(np.asarray(image), np.asarray(tiled))
    assert not np.array_equal(np.asarray(tiled), np.asarray(untiled))  # 128 px in 64 px tiles: really tiled
    with pytest.raises(ClientError) as refused:
        client.txt2img({**fields, "sd_core_tile": {"width": 64, "height": 64, "overlap": 12}})
    assert refused.value.status == 422 and "tile_overlap" in str(refused.value)


def test_hr_upscaler_names_a_model_of_the_upscaler_folders(client, engine, esrgan):
    result = client.txt2img({**HIRES, "hr_upscaler": "2x_tiny"})
    options = sd_core.HiresOptions(upscaler=sd_core.upscalers.Upscalers([esrgan]).find("2x_tiny"), steps=3)
    [expected] = engine.txt2img(
        "a red brick wall", width=SIZE, height=SIZE, steps=3, seed=5, cfg_scale=5.0, sampler="Euler", hires=options
    )
    assert np.array_equal(np.asarray(images(result)[0]), np.asarray(expected))
    assert "Hires upscaler: 2x_tiny" in info_of(result)["infotexts"][0]


@pytest.mark.parametrize(
    "fields, size, first",
    [
        ({"hr_scale": 1.5}, (96, 96), (64, 64)),
        ({"hr_resize_x": 128, "height": 96}, (128, 192), (64, 96)),
        ({"hr_resize_y": 100}, (96, 96), (64, 64)),  # floored to 96, as widths are
        ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 96), (64, 64)),  # cover, centre
        ({"firstphase_width": 96, "firstphase_height": 72, "width": 512, "height": 512}, (192, 144), (96, 72)),
    ],
)
def test_hires_sizes(client, fields, size, first):
    result = client.txt2img({**HIRES, "hr_second_pass_steps": 1, **fields})
    assert images(result)[0].size == size
    assert (info_of(result)["width"], info_of(result)["height"]) == first


def test_firstphase_without_hires_sets_the_size(client):
    """A1111 applies firstphase_width/height with or without enable_hr; a side left at 0 keeps width/height."""
    result = client.txt2img({**BASE, "firstphase_width": 72})
    assert images(result)[0].size == (72, SIZE) and "ignored_fields" not in info_of(result)


HR_FIELDS = {
    "hr_scale": 1.5,
    "hr_upscaler": "Nearest",
    "hr_second_pass_steps": 2,
    "hr_resize_x": 96,
    "hr_resize_y": 96,
    "hr_sampler_name": "Euler a",
    "hr_scheduler": "karras",
    "hr_prompt": "a blue sky",
    "hr_negative_prompt": "blurry",
    "denoising_strength": 0.5,
}


@pytest.fixture(scope="module")
def hires_baseline(client) -> dict:
    return client.txt2img(HIRES)


@pytest.mark.parametrize("name", sorted(HR_FIELDS))
def test_each_hires_field_changes_a_hires_image(client, hires_baseline, name):
    result = client.txt2img({**HIRES, name: HR_FIELDS[name]})
    assert [(img.size, img.tobytes()) for img in images(result)] != [
        (img.size, img.tobytes()) for img in images(hires_baseline)
    ]
    assert name not in info_of(result).get("ignored_fields", [])


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
        ({"hr_upscaler": "No such upscaler"}, "hr_upscaler"),
        ({"hr_sampler_name": "No such sampler"}, "hr_sampler_name"),
        ({"hr_scheduler": "no such schedule"}, "hr_scheduler"),
        ({"hr_resize_x": 4}, "hr_resize_x"),
        ({"hr_scale": 4.0}, "hr_scale"),  # 256x256 is above this server's --max-pixels
        ({"hr_second_pass_steps": 100, "denoising_strength": 0.05}, "denoising_strength"),  # a 2000-step schedule
    ],
)
def test_hires_values_the_server_cannot_use_are_refused_by_name(client, fields, field):
    with pytest.raises(ClientError) as caught:
        client.txt2img({**HIRES, **fields})
    assert caught.value.status == 422 and caught.value.field == field, caught.value.message


def test_the_checkpoint_it_already_uses_is_fine(client):
    assert len(client.txt2img({**HIRES, "hr_checkpoint_name": "Use same checkpoint"})["images"]) == 1


def test_the_infotext_s_hires_fields_are_read_back(client, hires_baseline):
    """A1111's apply_infotext: a hires image's parameters text makes the same image again."""
    text = info_of(hires_baseline)["infotexts"][0]
    again = client.txt2img({"infotext": text})
    assert images(again)[0].tobytes() == images(hires_baseline)[0].tobytes()
    resized = client.txt2img({**HIRES, "hr_resize_x": 96})
    text = info_of(resized)["infotexts"][0]
    assert "Hires resize: 96x0" in text
    assert images(client.txt2img({"infotext": text}))[0].size == (96, 96)


def test_latent_upscale_modes_are_listed(client):
    assert client.request("GET", "/sdapi/v1/latent-upscale-modes") == [{"name": name} for name in LATENT_MODES]


def test_progress_counts_two_jobs_per_hires_batch_and_an_interrupt_in_pass_1_returns_it(client):
    job = client.submit("txt2img", {**HIRES, "steps": 140, "n_iter": 2})
    state = wait_until(lambda: (s := client.progress()["state"])["sampling_step"] >= 2 and s, 60, what="sampling")
    assert (state["job_count"], state["job_no"], state["sampling_steps"]) == (4, 0, 140)
    client.interrupt()
    result = job.get(60)
    assert info_of(result)["interrupted"] is True
    assert [img.size for img in images(result)] == [(SIZE, SIZE)]  # the first pass's image, no later batch


def test_an_interrupt_in_pass_2_returns_the_hires_estimate(client):
    job = client.submit("txt2img", {**HIRES, "steps": 1, "hr_second_pass_steps": 140})
    state = wait_until(lambda: (s := client.progress()["state"])["job_no"] == 1 and s["sampling_step"] >= 2 and s, 60)
    assert (state["job_count"], state["sampling_steps"]) == (2, 140)
    client.interrupt()
    result = job.get(60)
    assert info_of(result)["interrupted"] is True and images(result)[0].size == (2 * SIZE, 2 * SIZE)


# --- img2img resize mode 3 ---------------------------------------------------------------------------------------


def test_resize_mode_3_is_the_engine_s_latent_resize(client, engine):
    init = sample_image(100, 60)  # encoded at 104x64 (13x8 latents), the latents resized to 8x8
    request = {**BASE, "init_images": [png_b64(init)], "resize_mode": 3, "denoising_strength": 0.6, "steps": 4}
    result = client.img2img(request)
    [image] = images(result)
    [expected] = engine.img2img(
        init, "a red brick wall", strength=0.6, steps=4, seed=5, cfg_scale=5.0, sampler="Euler", resize_mode="latent",
        width=SIZE, height=SIZE,
    )  # fmt: skip
    assert image.size == (SIZE, SIZE) and "ignored_fields" not in info_of(result)
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    stretched = client.img2img({**request, "resize_mode": 0})
    assert images(stretched)[0].tobytes() != image.tobytes()
    own_size = {k: v for k, v in request.items() if k not in ("width", "height")}
    assert images(client.img2img(own_size))[0].size == (104, 64)  # the image's size, rounded to multiples of 8
    unchanged = client.img2img({**request, "denoising_strength": 0})
    assert images(unchanged)[0].size == (SIZE, SIZE)


def test_resize_mode_3_with_a_mask_is_refused(client):
    mask = png_b64(sample_image().convert("L"))
    request = {**BASE, "init_images": [png_b64(sample_image())], "mask": mask, "resize_mode": 3}
    with pytest.raises(ClientError) as caught:
        client.img2img(request)
    assert caught.value.field == "resize_mode"
