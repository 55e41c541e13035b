"""Model upscalers over HTTP: `sd-core serve --upscaler-dir` with ESRGAN-family files the test writes itself, listed
and used through an unmodified A1111 client (`webuiapi`) and `SDClient`: `/upscalers`, `/realesrgan-models`,
`/cmd-flags`, extras single and batch, and `upscaler_for_img2img`; each result equals the engine's own run of that
file, and a file that is not usable is a 422 naming the field and the file."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from esrgan_files import original_layout, rrdb_weights, write_model
from PIL import Image
from server_utils import SIZE, open_b64, png_b64, sample_image, start_server, tiny_checkpoint

from sd_core import upscalers
from sd_core.client import ClientError, SDClient

pytestmark = pytest.mark.server


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run",))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ESRGAN")
    write_model(d / "2x_real.pth", rrdb_weights(2, seed=1), wrapper="params_ema")
    write_model(d / "4x_old.pth", original_layout(rrdb_weights(4)))
    with open(d / "broken.pth", "wb") as f:
        pickle.dump({"conv_first.weight": _RunsCode()}, f, protocol=2)
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory, folder):
    model = tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny.safetensors")
    srv = start_server(model, extra_args=("--upscaler-dir", str(folder)))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def webui(server):
    return pytest.importorskip("webuiapi").WebUIApi(baseurl=f"{server.url}/sdapi/v1")


@pytest.fixture
def client(server) -> SDClient:
    return SDClient(server.url, timeout=120)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def close(a: Image.Image, b: Image.Image) -> bool:
    """The same picture up to one level: the server runs torch on one thread, this process on several, and sums in
    another order can round a pixel the other way."""
    return a.size == b.size and int(np.abs(pixels(a) - pixels(b)).max()) <= 1


def test_listings_show_the_models_of_the_folder(webui, folder):
    listed = webui.get_upscalers()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "2x_real", "4x_old"]
    assert listed[3] == {
        "name": "2x_real",
        "model_name": "RealESRGAN",
        "model_path": str(folder / "2x_real.pth"),
        "model_url": None,
        "scale": 2,
    }
    assert (listed[4]["model_name"], listed[4]["scale"]) == ("ESRGAN", 4)
    assert webui.get_realesrgan_models() == [{"name": "2x_real", "path": str(folder / "2x_real.pth"), "scale": 2}]
    flags = webui.get_cmd_flags()
    assert flags["esrgan_models_path"] == flags["realesrgan_models_path"] == str(folder)


def test_extras_with_model_upscalers(webui, folder):
    engine = upscalers.Upscalers([folder])
    img = sample_image(40, 24)
    single = webui.extra_single_image(img, upscaler_1="4x_old", upscaling_resize=2)
    assert single.image.size == (80, 48) and "Postprocess upscaler: 4x_old" in single.info
    assert close(single.image, engine.find("4x_old").upscale(img, 2))
    batch = webui.extra_batch_images(
        [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)],
        upscaler_1="2x_real",
        upscaler_2="Lanczos",
        extras_upscaler_2_visibility=0.25,
        upscaling_resize=2,
    )
    mixed = Image.blend(engine.find("2x_real").upscale(img, 2), img.resize((80, 48), Image.Resampling.LANCZOS), 0.25)
    assert len(batch.images) == 2 and close(batch.images[0], mixed)
    assert "Postprocess upscaler 2: Lanczos" in batch.info


def test_a_file_that_is_not_usable_is_a_422_naming_it(client, folder):
    broken = str(folder / "broken.pth")
    for body, field in (
        ({"upscaler_1": "broken"}, "upscaler_1"),
        ({"upscaler_1": "Lanczos", "upscaler_2": "broken"}, "upscaler_2"),
    ):
        with pytest.raises(ClientError) as caught:
            client.request("POST", "/sdapi/v1/extra-single-image", {"image": png_b64(sample_image()), **body})
        assert caught.value.status == 422 and caught.value.field == field
        assert broken in caught.value.message and "code" in caught.value.message
    with pytest.raises(ClientError) as caught:
        client.set_options({"upscaler_for_img2img": "broken"})
    assert caught.value.field == "upscaler_for_img2img" and broken in caught.value.message


def test_upscaler_for_img2img_can_be_a_model(client, folder):
    small = sample_image(SIZE // 2, SIZE // 2)
    request = {"prompt": "a wall", "steps": 2, "init_images": [png_b64(small)], "denoising_strength": 0}
    request |= {"width": SIZE, "height": SIZE}  # enlarged to the request's size
    expected = upscalers.resize(small, SIZE, SIZE, "2x_real", upscalers.Upscalers([folder]))
    assert not close(expected, small.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    try:
        client.set_options({"upscaler_for_img2img": "2x_real"})
        assert close(open_b64(client.img2img(request)["images"][0]), expected)
    finally:
        client.set_options({"upscaler_for_img2img": None})
    override = {**request, "override_settings": {"upscaler_for_img2img": "2x_real"}}
    assert close(open_b64(client.img2img(override)["images"][0]), expected)
    with pytest.raises(ClientError) as caught:
        client.img2img({**request, "override_settings": {"upscaler_for_img2img": "broken"}})
    assert caught.value.field == "override_settings.upscaler_for_img2img"
