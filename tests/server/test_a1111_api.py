"""A1111's discovery endpoints, options, styles, extras, skip and leniency, over real HTTP against a real server.

Every listing endpoint answers through an unmodified `webuiapi` client; `/options` is a store of every A1111 setting
that reads back what was written; the leniency A1111 clients rely on (nulls, sizes, denoising strength 0, empty or
differently sized masks, 404 for an unknown sampler) holds; extras upscale exactly as A1111's pixel upscalers do.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from server_utils import SIZE, open_b64, png_b64, sample_image, start_server, tiny_checkpoint, wait_until
from test_a1111_fields import IMG2IMG, TXT2IMG

from sd_core.client import ClientError, SDClient

pytestmark = pytest.mark.server

BASE = {"prompt": "a red brick wall", "width": SIZE, "height": SIZE, "steps": 3, "seed": 5, "cfg_scale": 5.0}
LANCZOS, NEAREST = Image.Resampling.LANCZOS, Image.Resampling.NEAREST
STYLES = (
    "name,prompt,negative_prompt\n"
    'wrapped,"a photo of {prompt}, sharp",lowres\n'
    "appended,weathered,{prompt} and blur\n"
    "# comment,ignored,\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    styles = root / "styles.csv"
    styles.write_text("\ufeff" + STYLES, encoding="utf-8")
    model = tiny_checkpoint(Path(root) / "models" / "tiny.safetensors")
    srv = start_server(model, extra_args=("--styles", str(styles), "--max-pixels", str(4 * SIZE * SIZE)))
    srv.styles_path = styles
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> SDClient:
    return SDClient(server.url, timeout=120)


@pytest.fixture
def webui(server):
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)


def info_of(result: dict) -> dict:
    return json.loads(result["info"])


def rgb(b64: str) -> bytes:
    return open_b64(b64).convert("RGB").tobytes()


# --- discovery -------------------------------------------------------------------------------------------------


def test_webuiapi_helpers_for_every_listing_endpoint(webui, server):
    flags = webui.get_cmd_flags()
    assert flags["api"] is True and flags["nowebui"] is True and flags["port"] == int(server.url.rsplit(":", 1)[1])
    assert flags["styles_file"] == str(server.styles_path) and flags["api_auth"] is None and "medvram" in flags
    upscalers = webui.get_upscalers()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in webui.get_latent_upscale_modes()]  # hires fix's latent upscalers, A1111's list
    assert modes[:3] == ["Latent", "Latent (antialiased)", "Latent (bicubic)"] and len(modes) == 6
    assert [s["name"] for s in webui.get_prompt_styles()] == ["wrapped", "appended"]
    for empty in (webui.get_sd_vae, webui.get_loras, webui.get_hypernetworks, webui.get_face_restorers):
        assert empty() == []
    assert webui.get_realesrgan_models() == []
    assert webui.get_embeddings() == {"loaded": {}, "skipped": {}}
    memory = webui.get_memory()
    assert set(memory["ram"]) == {"free", "used", "total"} and 0 < memory["ram"]["used"] < memory["ram"]["total"]
    assert memory["cuda"] == {"error": "unavailable"} or "system" in memory["cuda"]
    # A1111 lists always-on scripts beside selectable ones (the ControlNet extension as "controlnet")
    assert webui.get_scripts() == {"txt2img": ["controlnet"], "img2img": ["controlnet", "sd upscale"]}
    assert webui.skip() is None  # nothing running: harmless, as A1111
    assert webui.refresh_checkpoints() is None
    assert webui.get_options()["sd_model_checkpoint"].startswith("tiny")
    img = sample_image(40, 24)
    single = webui.extra_single_image(img, upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (80, 48) and "Postprocess upscaler: Lanczos" in single.info
    batch = webui.extra_batch_images([img, img], upscaler_1="Nearest", upscaling_resize=1)
    assert [i.size for i in batch.images] == [(40, 24), (40, 24)]
    for path in ("/sdapi/v1/script-info", "/sdapi/v1/extensions"):
        assert webui.custom_get(path) == []


# --- options ---------------------------------------------------------------------------------------------------


def test_options_is_a_store_of_every_a1111_setting(client):
    options = client.options()
    assert len(options) > 250
    for key, default in {"samples_format": "png", "CLIP_stop_at_last_layers": 1, "eta_ancestral": 1.0}.items():
        assert options[key] == default
    assert options["jpeg_quality"] == 80 and options["quicksettings_list"] == ["sd_model_checkpoint"]
    # A1111's own options test (test/test_utils.py): write send_seed and read it back
    before = options["send_seed"]
    client.set_options({"send_seed": not before})
    assert client.options()["send_seed"] is (not before)
    client.set_options({"send_seed": before})
    assert client.options()["send_seed"] is before
    client.set_options(client.options())  # what GET gives, POST takes back
    with pytest.raises(ClientError) as caught:
        client.set_options({"send_size": False, "no_such_setting": 1})
    assert caught.value.status == 422 and caught.value.field == "no_such_setting"
    assert client.options()["send_size"] is True  # nothing of a refused POST is applied
    with pytest.raises(ClientError) as caught:
        client.set_options({"jpeg_quality": "high"})
    assert caught.value.field == "jpeg_quality"
    client.set_options({"api_useragent": "me", "jpeg_quality": 90})  # API-restricted keys stay as they are
    assert client.options()["api_useragent"] == "" and client.options()["jpeg_quality"] == 90
    client.set_options({"jpeg_quality": None})  # null: the default again
    assert client.options()["jpeg_quality"] == 80


def test_honoured_options(client):
    try:
        client.set_options({"tiling": True, "enable_pnginfo": False})
        result = client.txt2img(BASE)
        assert "Tiling: xy" in info_of(result)["infotexts"][0]
        assert "parameters" not in open_b64(result["images"][0]).info
        client.set_options({"face_restoration": True})
        with pytest.raises(ClientError) as caught:
            client.txt2img(BASE)
        assert caught.value.field == "restore_faces"
        assert len(client.txt2img({**BASE, "restore_faces": False})["images"]) == 1
    finally:
        client.set_options({"tiling": False, "enable_pnginfo": True, "face_restoration": False})
    clip = client.txt2img({**BASE, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert info_of(clip)["clip_skip"] == 2 and client.options()["CLIP_stop_at_last_layers"] == 1
    kept = {"override_settings": {"CLIP_stop_at_last_layers": 2, "jpeg_quality": 70}}
    client.txt2img({**BASE, **kept, "override_settings_restore_afterwards": False})
    assert client.options()["CLIP_stop_at_last_layers"] == 2 and client.options()["jpeg_quality"] == 70
    client.set_options({"CLIP_stop_at_last_layers": 1, "jpeg_quality": 80})
    ignored = info_of(client.txt2img({**BASE, "override_settings": {"jpeg_quality": 75, "not_a1111": 1}}))
    assert ignored["ignored_override_settings"] == ["jpeg_quality", "not_a1111"]


def test_init_image_background_and_upscaler_options(client):
    transparent = Image.new("RGBA", (SIZE, SIZE), (200, 10, 10, 0))
    request = {**BASE, "init_images": [png_b64(transparent)], "denoising_strength": 0}
    assert rgb(client.img2img(request)["images"][0]) == Image.new("RGB", (SIZE, SIZE), "white").tobytes()
    small = sample_image(SIZE // 2, SIZE // 2)
    request = {**BASE, "init_images": [png_b64(small)], "denoising_strength": 0}
    assert rgb(client.img2img(request)["images"][0]) == small.resize((SIZE, SIZE), LANCZOS).tobytes()
    try:
        client.set_options({"img2img_background_color": "#0000ff", "upscaler_for_img2img": "Nearest"})
        assert rgb(client.img2img(request)["images"][0]) == small.resize((SIZE, SIZE), NEAREST).tobytes()
        blue = client.img2img({**request, "init_images": [png_b64(transparent)]})
        assert rgb(blue["images"][0]) == Image.new("RGB", (SIZE, SIZE), "blue").tobytes()
        with pytest.raises(ClientError) as caught:
            client.set_options({"upscaler_for_img2img": "ESRGAN_4x"})
        assert caught.value.field == "upscaler_for_img2img"
    finally:
        client.set_options({"img2img_background_color": "#ffffff", "upscaler_for_img2img": None})


# --- leniency --------------------------------------------------------------------------------------------------


def test_null_means_the_default_for_every_field(client):
    nulls = {name: None for name in TXT2IMG}
    assert rgb(client.txt2img({**nulls, **BASE})["images"][0]) == rgb(client.txt2img(BASE)["images"][0])
    init = {"init_images": [png_b64(sample_image())]}
    nulls = {name: None for name in IMG2IMG}
    assert rgb(client.img2img({**nulls, **BASE, **init})["images"][0]) == rgb(
        client.img2img({**BASE, **init})["images"][0]
    )


def test_sizes_are_floored_to_multiples_of_8(client):
    result = client.txt2img({**BASE, "width": 71, "height": 100})
    assert open_b64(result["images"][0]).size == (64, 96)
    assert rgb(result["images"][0]) == rgb(client.txt2img({**BASE, "width": 64, "height": 96})["images"][0])
    small = client.txt2img({**BASE, "width": 47, "height": 20})  # below 64 as A1111: one latent per 8x8 block
    assert open_b64(small["images"][0]).size == (40, 16)
    with pytest.raises(ClientError) as caught:
        client.txt2img({**BASE, "height": 7})
    assert caught.value.status == 422 and caught.value.field == "height" and "below 8" in caught.value.message


def test_unknown_sampler_is_a1111s_404(client):
    for field in ("sampler_name", "sampler_index"):
        with pytest.raises(ClientError) as caught:
            client.txt2img({**BASE, "sampler_name": None, field: "Eulerish"})
        assert caught.value.status == 404 and caught.value.field == field
        assert caught.value.message.startswith("Sampler not found")


def test_denoising_strength_zero_returns_the_init_image_fitted(client):
    wide = sample_image(80, 64)
    request = {**BASE, "init_images": [png_b64(wide)], "denoising_strength": 0, "batch_size": 2}
    stretched = client.img2img(request)
    assert [rgb(b) for b in stretched["images"]] == [wide.resize((SIZE, SIZE), LANCZOS).tobytes()] * 2
    assert info_of(stretched)["all_seeds"] == [5, 5] and "Denoising strength: 0" in info_of(stretched)["infotexts"][0]
    cropped = client.img2img({**request, "resize_mode": 1, "batch_size": 1})
    assert rgb(cropped["images"][0]) == wide.crop((8, 0, 72, 64)).tobytes()  # covered, centred, cropped
    filled = open_b64(client.img2img({**request, "resize_mode": 2, "batch_size": 1})["images"][0]).convert("RGB")
    fitted = wide.resize((SIZE, 51), LANCZOS)  # fits the width; 7 rows above and 6 below are its stretched edges
    assert filled.crop((0, 7, SIZE, 58)).tobytes() == fitted.tobytes()
    top = [filled.crop((0, y, SIZE, y + 1)).tobytes() for y in range(7)]
    assert len(set(top)) == 1 and top[0] != filled.crop((0, 60, SIZE, 61)).tobytes()
    one_step = client.img2img({**BASE, "init_images": [png_b64(wide)], "steps": 1, "denoising_strength": 0.6})
    assert info_of(one_step)["denoising_strength"] == 0.6  # A1111 runs one step: no "leaves no step" error


def test_masks_empty_or_of_another_size(client):
    init = sample_image()
    request = {**BASE, "init_images": [png_b64(init)], "denoising_strength": 1.0, "mask_blur": 0}
    black = png_b64(Image.new("L", (SIZE, SIZE), 0))
    for only_masked in (False, True):
        result = client.img2img({**request, "mask": black, "inpaint_full_res": only_masked})
        assert rgb(result["images"][0]) == init.tobytes()  # nothing to repaint: the input comes back
    half = Image.new("L", (SIZE // 2, SIZE // 2), 0)
    half.paste(255, (0, 0, SIZE // 4, SIZE // 2))
    small = client.img2img({**request, "mask": png_b64(half), "inpaint_full_res": False})
    resized = client.img2img(
        {**request, "mask": png_b64(half.resize((SIZE, SIZE), LANCZOS)), "inpaint_full_res": False}
    )
    assert rgb(small["images"][0]) == rgb(resized["images"][0])  # fitted to the image as A1111 does (resize mode 0)
    right = (SIZE // 2 + 8, 0, SIZE, SIZE)
    assert open_b64(small["images"][0]).convert("RGB").crop(right).tobytes() == init.crop(right).tobytes()


def test_inpainting_without_a_size_keeps_the_image_size(client):
    init = sample_image(70, 66)
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (0, 0, 30, 66))
    request = {**BASE, "width": None, "height": None, "init_images": [png_b64(init)], "mask": png_b64(mask)}
    out = open_b64(client.img2img({**request, "inpaint_full_res": False, "mask_blur": 0})["images"][0])
    assert out.size == (70, 66) and out.crop((40, 0, 70, 66)).tobytes() == init.crop((40, 0, 70, 66)).tobytes()
    sized = open_b64(client.img2img({**request, "width": 64, "height": 64, "inpaint_full_res": False})["images"][0])
    assert sized.size == (64, 64)  # A1111: whole-picture inpainting makes width x height


def test_several_init_images_make_the_batch(client):
    images = [sample_image(), sample_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    request = {**BASE, "init_images": [png_b64(i) for i in images], "batch_size": 2, "denoising_strength": 0.5}
    result = client.img2img(request)
    assert info_of(result)["all_seeds"] == [5, 6] and len(result["images"]) == 2
    alone = client.img2img({**request, "init_images": [request["init_images"][1]], "batch_size": 1, "seed": 6})
    assert rgb(result["images"][1]) == rgb(alone["images"][0])
    with pytest.raises(ClientError) as caught:
        client.img2img({**request, "batch_size": 1})
    assert caught.value.field == "init_images"


# --- styles ----------------------------------------------------------------------------------------------------


def test_styles_from_styles_csv(client):
    result = client.txt2img(
        {**BASE, "prompt": "a cat", "negative_prompt": "dogs", "styles": ["wrapped", "appended", "x"]}
    )
    info = info_of(result)
    assert info["prompt"] == "a photo of a cat, sharp, weathered"
    assert info["negative_prompt"] == "dogs, lowres and blur"
    assert info["styles"] == ["wrapped", "appended", "x"] and info["ignored_styles"] == ["x"]
    typed = client.txt2img({**BASE, "prompt": info["prompt"], "negative_prompt": info["negative_prompt"]})
    assert rgb(result["images"][0]) == rgb(typed["images"][0])
    assert info["infotexts"][0].startswith("a photo of a cat, sharp, weathered\nNegative prompt: dogs, lowres and blur")


def test_extra_network_tags_are_taken_out_of_the_prompt(client):
    """Kinds of extra network the engine does not apply (LoRAs it does: tests/server/test_loras_api.py)."""
    tagged = client.txt2img({**BASE, "prompt": "a red <hypernet:bricks:0.8>brick wall"})
    info = info_of(tagged)
    assert info["ignored_extra_networks"] == ["hypernet:bricks:0.8"]
    assert info["prompt"] == "a red <hypernet:bricks:0.8>brick wall"  # A1111 keeps the tag in what it reports
    assert rgb(tagged["images"][0]) == rgb(client.txt2img({**BASE, "prompt": "a red brick wall"})["images"][0])


# --- extras ----------------------------------------------------------------------------------------------------


def a1111_upscale(img: Image.Image, scale: float, method: Image.Resampling) -> Image.Image:
    """A1111's pixel upscale: one resize by the factor, then Lanczos to the size floored to a multiple of 8."""
    target = (int(img.width * scale // 8 * 8), int(img.height * scale // 8 * 8))
    img = img.resize((int(img.width * scale), int(img.height * scale)), method)
    return img if img.size == target else img.resize(target, LANCZOS)


def extras(client: SDClient, img: Image.Image, **fields) -> Image.Image:
    return open_b64(client.request("POST", "/sdapi/v1/extra-single-image", {"image": png_b64(img), **fields})["image"])


def test_extras_upscale_as_a1111(client):
    img = sample_image(61, 45)
    for name, method in (("Lanczos", LANCZOS), ("Nearest", NEAREST)):
        out = extras(client, img, upscaler_1=name, upscaling_resize=2)
        assert out.size == (120, 88) and out.tobytes() == a1111_upscale(img, 2, method).tobytes()
    assert extras(client, img).tobytes() == img.tobytes()  # upscaler_1 "None": as it was
    to = extras(client, img, upscaler_1="Nearest", resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100)
    scaled = a1111_upscale(img, 100 / 45, NEAREST)
    expected = Image.new("RGB", (100, 100))
    expected.paste(scaled, (50 - scaled.width // 2, 50 - scaled.height // 2))
    assert to.size == (100, 100) and to.tobytes() == expected.tobytes()
    uncropped = extras(
        client,
        img,
        upscaler_1="Nearest",
        resize_mode=1,
        upscaling_resize_w=100,
        upscaling_resize_h=100,
        upscaling_crop=False,
    )
    assert uncropped.size == scaled.size
    blended = extras(client, img, upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    mix = Image.blend(a1111_upscale(img, 2, LANCZOS), a1111_upscale(img, 2, NEAREST), 0.5)
    assert blended.tobytes() == mix.tobytes()


def test_extras_keep_the_parameters_and_refuse_what_they_cannot_do(client):
    generated = client.txt2img(BASE)["images"][0]
    body = {"image": generated, "upscaler_1": "Lanczos", "upscaling_resize": 1.5}
    result = client.request("POST", "/sdapi/v1/extra-single-image", body)
    out = open_b64(result["image"])
    assert out.info["parameters"] == open_b64(generated).info["parameters"]
    assert out.info["postprocessing"] == "Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos"
    assert result["html_info"] == "<p>Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos</p>"
    for bad, field in (
        ({"upscaler_1": "ESRGAN_4x"}, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "SwinIR 4x"}, "upscaler_2"),
        ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
        ({"codeformer_visibility": 1.0}, "codeformer_visibility"),
        ({"image": png_b64(sample_image(100, 100)), "upscaling_resize": 64}, "upscaling_resize"),  # 6400x6400
    ):
        with pytest.raises(ClientError) as caught:
            client.request("POST", "/sdapi/v1/extra-single-image", {**body, **bad})
        assert caught.value.status == 422 and caught.value.field == field, (bad, caught.value.message)


# --- scripts ---------------------------------------------------------------------------------------------------


def test_sd_upscale_script(webui, client):
    """A1111's script_args [info, overlap, upscaler index, scale]: the init image upscaled, then one tiled img2img in
    tiles of width x height; one image per n_iter with seed + n; A1111's infotext fields."""
    upscalers = [u["name"] for u in client.request("GET", "/sdapi/v1/upscalers")]
    img = sample_image(SIZE, 48)
    result = webui.img2img(images=[img], prompt="a red brick wall", script_name="SD upscale", width=SIZE, height=SIZE,
                           script_args=[None, 32, upscalers.index("Lanczos"), 2], steps=2, seed=5, n_iter=2,
                           denoising_strength=0.4, sampler_name="Euler", cfg_scale=5)  # fmt: skip
    assert [i.size for i in result.images] == [(128, 96), (128, 96)]
    assert result.info["all_seeds"] == [5, 6] and (result.info["width"], result.info["height"]) == (128, 96)
    assert result.info["extra_generation_params"] == {"SD upscale overlap": 32, "SD upscale upscaler": "Lanczos"}
    text = result.info["infotexts"][0]
    for field in ("Size: 128x96", "Tile size: 64x64, Tile overlap: 32", "SD upscale overlap: 32", "upscaler: Lanczos"):
        assert field in text, text
    assert result.images[0].info["parameters"] == text
    kept = client.img2img({**BASE, "init_images": [png_b64(img)], "script_name": "sd upscale", "script_args": ["", 0,
                           "None", 4], "denoising_strength": 0, "resize_mode": 1})  # fmt: skip
    assert open_b64(kept["images"][0]).size == (SIZE, 48)  # "None" upscales nothing, as A1111's script
    assert info_of(kept)["ignored_fields"] == ["resize_mode"]


def test_sd_upscale_refuses_what_it_cannot_do(client):
    base = {**BASE, "init_images": [png_b64(sample_image(SIZE, SIZE))], "script_name": "SD upscale"}
    for change, field in [
        ({"script_args": [None, 64, 1, 2]}, "script_args[1]"),  # the overlap must be less than the 64 px tile
        ({"script_args": [None, 16, 99, 2]}, "script_args[2]"),
        ({"script_args": [None, 16, "ESRGAN_7x", 2]}, "script_args[2]"),
        ({"script_args": [None, 16, 1, 0]}, "script_args[3]"),
        ({"script_args": [None, 16, 1, "2"]}, "script_args[3]"),
        ({"script_args": [None, 16, 1, 4]}, "width"),  # 256 x 256: more than --max-pixels
        ({"mask": png_b64(Image.new("L", (SIZE, SIZE), 255))}, "mask"),
    ]:
        with pytest.raises(ClientError) as caught:
            client.img2img({**base, **change})
        assert (caught.value.status, caught.value.field) == (422, field), (change, caught.value.message)
    with pytest.raises(ClientError) as caught:
        client.txt2img({**BASE, "script_name": "SD upscale"})  # an img2img script only, as A1111
    assert caught.value.status == 422 and "Script 'SD upscale' not found" in caught.value.message


# --- skip ------------------------------------------------------------------------------------------------------


def test_skip_finishes_the_current_batch_and_goes_on(client):
    job = client.submit("txt2img", {**BASE, "seed": 40, "steps": 150, "n_iter": 3})
    wait_until(lambda: client.progress()["state"]["sampling_step"] >= 2, 60, what="the first batch to start")
    client.request("POST", "/sdapi/v1/skip")
    wait_until(lambda: client.progress()["state"]["job_no"] >= 1, 60, what="the next batch to start")
    info = info_of(job.get(120))
    assert info["interrupted"] is False
    # the skipped batch ends early: with its current estimate where the engine finishes it, else without images
    assert info["all_seeds"] in ([40, 41, 42], [41, 42])
    assert client.progress()["state"]["skipped"] is False
