"""AC4 and AC5 over the server: the A1111 ControlNet extension's request shape (its API example's unit, and webuiapi's
`ControlNetUnit` unmodified) gives the Python API's image; `/controlnet/model_list` lists `--controlnet-dir`;
unknown models and modules, paths and unsupported fields are 4xx naming the field; a control image of another size
is fitted, not refused; an SDXL ControlNet on the SD1 model and a broken file are clear errors."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from controlnet_fixtures import write_controlnet_file
from PIL import Image
from server_utils import SERVER_THREADS, SIZE, open_b64, png_b64, start_server, tiny_checkpoint

import sd_core
from sd_core.client import ClientError, SDClient
from sd_core.controlnet import preprocess
from sd_core.pnginfo import parse_parameters

pytestmark = pytest.mark.server
BASE = {"prompt": "a stone wall", "width": SIZE, "height": SIZE, "steps": 4, "seed": 11, "cfg_scale": 6.0,
        "sampler_name": "Euler"}  # fmt: skip


def drawing(size: tuple[int, int] = (48, 40)) -> Image.Image:
    """Dark strokes and a disc on white, of another size than the generation."""
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    arr[8:12, :] = 0
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    arr[(x - 30) ** 2 + (y - 24) ** 2 < 80] = (40, 90, 160)
    return Image.fromarray(arr)


def hash8(path) -> str:
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_server")
    nets = root / "ControlNet"
    write_controlnet_file(nets / "control_tiny_canny.safetensors")
    write_controlnet_file(nets / "xl" / "control_tiny_xl.safetensors", "sdxl")
    (nets / "broken.safetensors").write_bytes((nets / "control_tiny_canny.safetensors").read_bytes()[:5000])
    return {"root": root, "nets": nets, "model": tiny_checkpoint(root / "models" / "tiny.safetensors")}


@pytest.fixture(scope="module")
def server(folders):
    srv = start_server(folders["model"], extra_args=("--controlnet-dir", str(folders["nets"])))
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> SDClient:
    return SDClient(server.url, timeout=180)


@pytest.fixture(scope="module")
def engine(folders):
    """The engine as the server loads it (its default dtype), at its thread count: packed weights and GEMMs split
    over another number of threads sum in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        pipe = sd_core.load(folders["model"], device="cpu")
        net = sd_core.load_controlnet(folders["nets"] / "control_tiny_canny.safetensors", "cpu", pipe.dtype)
    finally:
        torch.set_num_threads(threads)
    return pipe, net


def api_image(engine, **control) -> np.ndarray:
    """The Python API's image for BASE with one unit, at the server's thread count."""
    pipe, net = engine
    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        kw = dict(width=SIZE, height=SIZE, steps=4, seed=11, cfg_scale=6.0, sampler="Euler")
        img = pipe.txt2img("a stone wall", control=[sd_core.Control(net, **control)], **kw)[0]
    finally:
        torch.set_num_threads(threads)
    return np.asarray(img, dtype=np.float64)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(open_b64(b64).convert("RGB"), dtype=np.float64)


def test_model_module_lists_and_version(client, folders):
    name = f"control_tiny_canny [{hash8(folders['nets'] / 'control_tiny_canny.safetensors')}]"
    listed = client.request("GET", "/controlnet/model_list?update=true")["model_list"]
    assert name in listed and any(n.startswith("control_tiny_xl [") for n in listed)
    modules = client.request("GET", "/controlnet/module_list?alias_names=false")
    assert {"none", "canny", "invert", "threshold", "scribble"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["sliders"][0]["value"] == 100
    assert client.request("GET", "/controlnet/version") == {"version": 3}


def test_the_extensions_api_example_gives_the_python_api_image(client, engine, folders):
    """The extension's API example: `input_image`, `module` "canny", `model` with its hash; everything else left to
    the defaults (weight 1, Crop and Resize, processor resolution 512, thresholds 100/200, the whole run). The
    48x40 image is fitted to 64x64, not refused; the detected map comes after the image."""
    model = f"control_tiny_canny [{hash8(folders['nets'] / 'control_tiny_canny.safetensors')}]"
    unit = {"input_image": png_b64(drawing()), "module": "canny", "model": model}
    out = client.request("POST", "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert len(out["images"]) == 2
    detected = preprocess.run("canny", drawing(), 512)
    assert np.array_equal(np.asarray(open_b64(out["images"][1]).convert("RGB")), detected)
    fitted = sd_core.resize.fit(Image.fromarray(detected), SIZE, SIZE, "crop")
    expected = api_image(engine, image=fitted, steps="a1111")
    assert np.abs(pixels(out["images"][0]) - expected).max() == 0
    without = pixels(client.request("POST", "/sdapi/v1/txt2img", BASE)["images"][0])
    assert np.abs(without - expected).mean() > 1.0
    params = parse_parameters(open_b64(out["images"][0]).info["parameters"])
    assert params["ControlNet 0"].startswith(
        f"Module: canny, Model: {model}, Weight: 1.0, Resize Mode: Crop and Resize"
    )


def test_webuiapi_controlnet_unit_gives_the_python_api_image(server, engine):
    """webuiapi (an unmodified A1111 client) sends every unit field; Just Resize, a window, a soft control mode."""
    import webuiapi

    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    api = webuiapi.WebUIApi(host=host, port=int(port))
    unit = webuiapi.ControlNetUnit(
        image=drawing(), module="none", model="control_tiny_canny", weight=0.7, resize_mode="Just Resize",
        guidance_start=0.25, guidance_end=0.75, control_mode=1,
    )  # fmt: skip
    kw = {k: v for k, v in BASE.items() if k != "sampler_name"}
    # a dict of our own: webuiapi writes the units into its `alwayson_scripts={}` default, which would then send
    # them with every later webuiapi request in this process (other test files')
    result = api.txt2img(**kw, sampler_name="Euler", controlnet_units=[unit], alwayson_scripts={})
    assert len(result.images) == 1  # module none: no detected map
    fitted = drawing().resize((SIZE, SIZE), Image.LANCZOS)
    expected = api_image(engine, image=fitted, strength=0.7, start=0.25, end=0.75, control_mode="prompt", steps="a1111")
    assert np.abs(np.asarray(result.images[0].convert("RGB"), dtype=np.float64) - expected).max() == 0
    # webuiapi sends thresholds 64/64, which module "none" does not use (nor does the extension): listed as such
    unit_fields = [f for f in result.info["ignored_fields"] if f.startswith("alwayson_scripts.controlnet")]
    assert unit_fields == [f"alwayson_scripts.controlnet.args[0].threshold_{x}" for x in "ab"]


@pytest.mark.parametrize(
    ("unit", "field", "words"),
    [
        ({"model": "no_such_net"}, "alwayson_scripts.controlnet.args[0].model", "no_such_net"),
        ({"module": "depth_midas"}, "alwayson_scripts.controlnet.args[0].module", "depth_midas"),
        ({"model": "../models/tiny"}, "alwayson_scripts.controlnet.args[0].model", "refused"),
        ({"model": "/etc/passwd"}, "alwayson_scripts.controlnet.args[0].model", "refused"),
        ({"advanced_weighting": [1.0] * 13}, "alwayson_scripts.controlnet.args[0].advanced_weighting", "refused"),
        ({"hr_option": "Low res only"}, "alwayson_scripts.controlnet.args[0].hr_option", "Both"),
        ({"frobnicate": 1}, "alwayson_scripts.controlnet.args[0].frobnicate", "not a ControlNet unit field"),
        ({"weight": 3}, "alwayson_scripts.controlnet.args[0].weight", "0 to 2"),
        ({"image": ""}, "alwayson_scripts.controlnet.args[0].input_image", "needs an image"),
        ({"image": png_b64(Image.new("RGB", (1, 1)))[:-8] + "AAAA!!!!"}, "alwayson_scripts.controlnet.args[0].image",
         "base64"),
        ({"image": "aGVsbG8gd29ybGQ="}, "alwayson_scripts.controlnet.args[0].image", "not a readable image"),
    ],
)  # fmt: skip
def test_bad_units_are_4xx_naming_the_field(client, unit, field, words):
    body = {"image": png_b64(drawing()), "module": "none", "model": "control_tiny_canny", **unit}
    with pytest.raises(ClientError) as err:
        client.request("POST", "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"ControlNet": {"args": [body]}}})
    assert 400 <= err.value.status < 500 and err.value.field == field
    assert words in err.value.message


def test_an_sdxl_controlnet_on_the_sd1_model_and_a_broken_file_are_clear_errors(client):
    for model, words in (("control_tiny_xl", "SDXL"), ("broken", "broken.safetensors")):
        unit = {"image": png_b64(drawing()), "model": model, "enabled": True}
        with pytest.raises(ClientError) as err:
            client.request("POST", "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
        assert err.value.status == 422 and words in err.value.message and "controlnet" in (err.value.field or "")


def test_a_disabled_unit_changes_nothing_and_detect_runs_a_module(client):
    unit = {"image": png_b64(drawing()), "model": "no_such_net", "enabled": False}
    out = client.request("POST", "/sdapi/v1/txt2img", {**BASE, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    plain = client.request("POST", "/sdapi/v1/txt2img", BASE)
    assert np.array_equal(pixels(out["images"][0]), pixels(plain["images"][0]))
    body = {"controlnet_module": "canny", "controlnet_input_images": [png_b64(drawing())],
            "controlnet_processor_res": 64, "controlnet_threshold_a": 50, "controlnet_threshold_b": 150}  # fmt: skip
    got = client.request("POST", "/controlnet/detect", body)
    assert got["info"] == "Success"
    expected = preprocess.run("canny", drawing(), 64, 50, 150)
    assert np.array_equal(np.asarray(open_b64(got["images"][0]).convert("RGB")), expected)
    with pytest.raises(ClientError) as err:
        client.request("POST", "/controlnet/detect", {**body, "controlnet_module": "openpose"})
    assert err.value.status == 422 and err.value.field == "controlnet_module" and "openpose" in err.value.message


def test_img2img_with_a_unit_gives_the_python_api_image(client, engine):
    pipe, net = engine
    init = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 3, (64, 1, 3)))
    unit = {"image": png_b64(drawing()), "module": "invert", "model": "control_tiny_canny", "resize_mode": 0,
            "save_detected_map": False}  # fmt: skip
    body = {**BASE, "init_images": [png_b64(init)], "denoising_strength": 0.75}
    out = client.request("POST", "/sdapi/v1/img2img", {**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}})
    assert len(out["images"]) == 1
    inverted = preprocess.run("invert", drawing(), 512)
    fitted = Image.fromarray(inverted).resize((SIZE, SIZE), Image.LANCZOS)
    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        kw = dict(width=SIZE, height=SIZE, steps=4, seed=11, cfg_scale=6.0, sampler="Euler", strength=0.75)
        control = [sd_core.Control(net, fitted, steps="a1111")]
        expected = np.asarray(pipe.img2img(init, "a stone wall", control=control, **kw)[0], dtype=np.float64)
    finally:
        torch.set_num_threads(threads)
    assert np.abs(pixels(out["images"][0]) - expected).max() == 0
    plain = pixels(client.request("POST", "/sdapi/v1/img2img", body)["images"][0])
    assert np.abs(plain - expected).mean() > 1.0
