"""The behaviours A1111's own API test suite exercises (its test_txt2img, test_img2img, test_extras, test_utils),
against a real `sd-core serve` process over plain HTTP: the same kinds of requests (every field A1111's tests send,
in their form: `sampler_index`, `tiling` as a boolean, -1 seeds, 64 px images), each checked for more than a 200:
the image count and size, and what the variant changes. Written for this project from what those tests send; the
face-restoration and interrogation tests are out of scope (no such models ship): `restore_faces` is a 422 naming
it and `/interrogate` A1111's 404 for a missing model.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from server_utils import open_b64, png_b64, sample_image, start_server, tiny_checkpoint

from sd_core.pnginfo import parse_parameters

pytestmark = pytest.mark.server

# the fields A1111's txt2img test sends, with its values ("Euler a", 3 steps, 64x64)
TXT2IMG = {
    "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0, "firstphase_height": 0,
    "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "", "prompt": "example prompt",
    "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0, "sampler_index": "Euler a",
    "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3, "styles": [], "subseed": -1,
    "subseed_strength": 0, "tiling": False, "width": 64,
}  # fmt: skip
IMG2IMG_EXTRA = {
    "denoising_strength": 0.75, "include_init_images": False, "inpaint_full_res": False,
    "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
    "mask_blur": 4, "override_settings": {}, "resize_mode": 0,
}  # fmt: skip
IMG2IMG = {k: v for k, v in TXT2IMG.items() if not k.startswith(("enable_hr", "firstphase"))} | IMG2IMG_EXTRA


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    srv = start_server(tiny_checkpoint(Path(root) / "models" / "tiny.safetensors"))
    yield srv.url
    srv.stop()


def call(url: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a GET (no body) or a POST."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def generated(url: str, kind: str, body: dict[str, Any]) -> tuple[list[Image.Image], dict[str, Any]]:
    status, out = call(url, f"/sdapi/v1/{kind}", body)
    assert status == 200, out
    return [open_b64(b64) for b64 in out["images"]], json.loads(out["info"])


def init_image() -> str:
    return png_b64(sample_image(64, 64))


def mask_image() -> str:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return png_b64(mask)


# --- txt2img ---------------------------------------------------------------------------------------------------


def test_txt2img_simple(url):
    images, info = generated(url, "txt2img", TXT2IMG)
    assert [img.size for img in images] == [(64, 64)]
    assert info["sampler_name"] == "Euler a" and 0 <= info["seed"] and info["all_seeds"] == [info["seed"]]


@pytest.mark.parametrize(
    "change",
    [
        {"negative_prompt": "example negative prompt"},
        {"prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], [alt|alt1]"},
    ],
    ids=["negative prompt", "complex prompt"],
)
def test_txt2img_prompts_change_the_image(url, change):
    fixed = TXT2IMG | {"seed": 11}
    [plain], _ = generated(url, "txt2img", fixed)
    [image], info = generated(url, "txt2img", fixed | change)
    assert image.tobytes() != plain.tobytes()
    assert info["prompt"] == change.get("prompt", fixed["prompt"])


def test_txt2img_not_square(url):
    [image], info = generated(url, "txt2img", TXT2IMG | {"height": 128})
    assert image.size == (64, 128) and (info["width"], info["height"]) == (64, 128)


def test_txt2img_hires_fix_with_a1111_s_defaults(url):
    """`enable_hr` alone (A1111's test): hr_scale 2 with the default upscaler; denoising_strength 0 as sent."""
    [image], info = generated(url, "txt2img", TXT2IMG | {"enable_hr": True, "seed": 3})
    assert image.size == (128, 128)
    params = parse_parameters(info["infotexts"][0])
    assert params["Hires upscale"] == "2.0" and "Hires upscaler" in params and params["Size"] == "64x64"


def test_txt2img_tiling_wraps(url):
    [image], info = generated(url, "txt2img", TXT2IMG | {"tiling": True, "seed": 4})
    assert image.size == (64, 64) and "Tiling: " in info["infotexts"][0]
    [plain], _ = generated(url, "txt2img", TXT2IMG | {"seed": 4})
    assert image.tobytes() != plain.tobytes()


def test_txt2img_restore_faces_is_refused_naming_it(url):
    status, out = call(url, "/sdapi/v1/txt2img", TXT2IMG | {"restore_faces": True})
    assert status == 422 and "restore_faces" in json.dumps(out)


@pytest.mark.parametrize("sampler", ["PLMS", "DDIM", "UniPC"])
def test_txt2img_vanilla_samplers(url, sampler):
    [image], info = generated(url, "txt2img", TXT2IMG | {"sampler_index": sampler, "seed": 5})
    assert image.size == (64, 64) and info["sampler_name"] == sampler


def test_txt2img_n_iter_and_batch_size(url):
    images, info = generated(url, "txt2img", TXT2IMG | {"n_iter": 2, "batch_size": 2, "seed": 3})
    assert len(images) == 4 and info["all_seeds"] == [3, 4, 5, 6]
    assert len({img.tobytes() for img in images}) == 4
    [third], _ = generated(url, "txt2img", TXT2IMG | {"seed": 5})  # image 3 alone from its own seed
    alone, batched = (np.asarray(img.convert("RGB"), dtype=np.float64) for img in (third, images[2]))
    assert np.abs(alone - batched).mean() < 1.0


# --- img2img ---------------------------------------------------------------------------------------------------


def test_img2img_simple(url):
    [image], info = generated(url, "img2img", IMG2IMG | {"init_images": [init_image()]})
    assert image.size == (64, 64) and info["denoising_strength"] == 0.75


def test_inpainting_with_a_mask_and_inverted(url):
    body = IMG2IMG | {"init_images": [init_image()], "mask": mask_image(), "seed": 8, "mask_blur": 0}
    [masked], _ = generated(url, "img2img", body)
    [inverted], _ = generated(url, "img2img", body | {"inpainting_mask_invert": True})
    source = sample_image(64, 64)
    # the mask's outside (corner) is kept by the mask, repainted by the inverted mask; its centre the other way
    corner, centre = (2, 2), (32, 32)
    assert masked.convert("RGB").getpixel(corner) == source.getpixel(corner)
    assert inverted.convert("RGB").getpixel(corner) != source.getpixel(corner)
    assert inverted.convert("RGB").getpixel(centre) == source.getpixel(centre)


def test_img2img_sd_upscale_script(url):
    body = IMG2IMG | {"init_images": [init_image()], "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2]}
    [image], info = generated(url, "img2img", body)
    assert image.size == (128, 128)
    assert "SD upscale upscaler: Lanczos" in info["infotexts"][0]


# --- options, listings, extras ---------------------------------------------------------------------------------


def test_options_write_and_read_back(url):
    status, options = call(url, "/sdapi/v1/options")
    assert status == 200
    before = options["send_seed"]
    assert call(url, "/sdapi/v1/options", {"send_seed": not before})[0] == 200
    assert call(url, "/sdapi/v1/options")[1]["send_seed"] is (not before)
    assert call(url, "/sdapi/v1/options", {"send_seed": before})[0] == 200


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("cmd-flags", dict),
        ("samplers", list),
        ("upscalers", list),
        ("sd-models", list),
        ("hypernetworks", list),
        ("face-restorers", list),
        ("realesrgan-models", list),
        ("prompt-styles", list),
        ("embeddings", dict),
    ],
)
def test_list_endpoints(url, path, shape):
    status, body = call(url, f"/sdapi/v1/{path}")
    assert status == 200 and isinstance(body, shape)


def test_extras_simple_upscaling(url):
    body = {
        "resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
        "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "image": init_image(),
    }  # fmt: skip
    status, out = call(url, "/sdapi/v1/extra-single-image", body)
    assert status == 200 and open_b64(out["image"]).size == (128, 128)


def test_png_info_reads_a_generated_image_s_parameters(url):
    status, out = call(url, "/sdapi/v1/txt2img", TXT2IMG | {"seed": 9})
    assert status == 200
    status, info = call(url, "/sdapi/v1/png-info", {"image": out["images"][0]})
    assert status == 200 and info["parameters"]["Seed"] == "9" and info["info"].startswith("example prompt")


def test_interrogate_is_a1111_s_404_for_a_missing_model(url):
    status, out = call(url, "/sdapi/v1/interrogate", {"image": init_image(), "model": "clip"})
    assert status == 404 and "clip" in json.dumps(out)
