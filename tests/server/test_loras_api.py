"""LoRAs and embeddings over the A1111 API (acceptance 4): `--lora-dir` and `--embeddings-dir`, `<lora:...>` in the
prompt, `/sdapi/v1/loras`, `/refresh-loras` and `/embeddings` in A1111's shapes, the hashes in the infotext, names
that are paths refused, a generation equal to the engine's own with the same LoRA; and an SDXL model's LoRA tag and
embeddings (SDXL ones loaded, SD1 ones skipped)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, save
from model_fixtures import TEXT_WIDTH, _cached_folder
from safetensors.torch import save_file
from server_utils import SERVER_THREADS, SIZE, open_b64, start_server, tiny_checkpoint

import sd_core
from sd_core.client import ClientError, SDClient

pytestmark = pytest.mark.server

BASE = {"width": SIZE, "height": SIZE, "steps": 3, "seed": 5, "cfg_scale": 5.0, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("networks")
    ref = StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    loras, embeddings = root / "loras", root / "embeddings"
    save(loras / "bricks.safetensors", kohya_lora(ref.unet, ref.text_encoder, seed=1), {"ss_output_name": "redbrick"})
    save(loras / "sub" / "moss.safetensors", kohya_lora(ref.unet, ref.text_encoder, seed=2))
    embeddings.mkdir()
    save_file({"emb_params": torch.randn(2, TEXT_WIDTH)}, str(embeddings / "stonetex.safetensors"))
    save_file({"emb_params": torch.randn(2, 1024)}, str(embeddings / "widetex.safetensors"))
    return root, tiny_checkpoint(root / "models" / "tiny.safetensors")


@pytest.fixture(scope="module")
def server(folders):
    root, model = folders
    srv = start_server(
        model, extra_args=("--lora-dir", str(root / "loras"), "--embeddings-dir", str(root / "embeddings"))
    )
    yield srv
    srv.stop()


@pytest.fixture
def client(server) -> SDClient:
    return SDClient(server.url, timeout=120)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(open_b64(b64).convert("RGB"), dtype=np.float64)


def test_loras_lists_the_folder_in_a1111s_shape(client, folders):
    root, _ = folders
    items = client.request("GET", "/sdapi/v1/loras")
    assert [(i["name"], i["alias"], i["path"]) for i in items] == [
        ("bricks", "redbrick", str(root / "loras" / "bricks.safetensors")),
        ("moss", "moss", str(root / "loras" / "sub" / "moss.safetensors")),
    ]
    assert items[0]["metadata"] == {"ss_output_name": "redbrick"}


def test_refresh_loras_finds_a_new_file(client, folders):
    root, _ = folders
    (root / "loras" / "late.safetensors").write_bytes((root / "loras" / "bricks.safetensors").read_bytes())
    try:
        assert client.request("POST", "/sdapi/v1/refresh-loras") is None
        assert "late" in [i["name"] for i in client.request("GET", "/sdapi/v1/loras")]
    finally:
        (root / "loras" / "late.safetensors").unlink()
        client.request("POST", "/sdapi/v1/refresh-loras")


def test_lora_tag_applies_and_the_infotext_has_its_hash(client, folders):
    root, _ = folders
    plain = client.txt2img({**BASE, "prompt": "a red brick wall"})
    tagged = client.txt2img({**BASE, "prompt": "a red brick wall <lora:bricks:0.8>"})
    assert np.abs(pixels(tagged["images"][0]) - pixels(plain["images"][0])).mean() > 1.0
    info = json.loads(tagged["info"])
    data = (root / "loras" / "bricks.safetensors").read_bytes()
    header = int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[8 + header :]).hexdigest()[:12]
    assert info["infotexts"][0].startswith("a red brick wall <lora:bricks:0.8>\n")
    assert f'Lora hashes: "bricks: {addnet}"' in info["infotexts"][0]
    assert "ignored_extra_networks" not in info


def test_lora_by_alias_in_a_subfolder(client):
    plain = client.txt2img({**BASE, "prompt": "a wall"})
    aliased = client.txt2img({**BASE, "prompt": "a wall <lora:redbrick:1> <lora:moss:0.5>"})
    assert np.abs(pixels(aliased["images"][0]) - pixels(plain["images"][0])).mean() > 1.0


def test_server_image_equals_the_engines(client, folders):
    """The engine as the server loads it, at the server's thread count (other counts sum GEMMs in another order)."""
    root, model = folders
    threads = torch.get_num_threads()
    torch.set_num_threads(SERVER_THREADS)
    try:
        pipe = sd_core.load(model, device="cpu", lora_dirs=[root / "loras"])
        mine = pipe.txt2img("a wall <lora:bricks:0.7:1.1>", width=SIZE, height=SIZE, steps=3, seed=5, cfg_scale=5.0)
    finally:
        torch.set_num_threads(threads)
    served = client.txt2img({**BASE, "prompt": "a wall <lora:bricks:0.7:1.1>"})
    assert np.array_equal(np.asarray(mine[0], dtype=np.float64), pixels(served["images"][0]))


@pytest.mark.parametrize("name", ["../loras/bricks", "/etc/passwd", "sub/moss", ".."])
def test_names_that_are_paths_are_refused(client, name):
    with pytest.raises(ClientError) as caught:
        client.txt2img({**BASE, "prompt": f"a wall <lora:{name}:1>"})
    assert caught.value.status == 422 and caught.value.field == "prompt" and "not a plain name" in str(caught.value)


def test_unknown_lora_is_a_422_naming_it(client):
    with pytest.raises(ClientError) as caught:
        client.txt2img({**BASE, "prompt": "a wall <lora:nosuch:1>"})
    assert caught.value.status == 422 and "'nosuch'" in str(caught.value)


def test_disable_extra_networks_keeps_the_tag_as_text(client):
    tag = "a wall <lora:bricks:1>"
    off = client.txt2img({**BASE, "prompt": tag, "disable_extra_networks": True})
    assert "Lora hashes" not in json.loads(off["info"])["infotexts"][0]


def test_embeddings_listed_by_the_models_width(client):
    listing = client.request("GET", "/sdapi/v1/embeddings")
    assert listing["loaded"] == {
        "stonetex": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": TEXT_WIDTH, "vectors": 2}
    }
    assert list(listing["skipped"]) == ["widetex"]


def test_embedding_in_the_prompt_has_its_hash(client, folders):
    root, _ = folders
    result = client.txt2img({**BASE, "prompt": "stonetex wall"})
    digest = hashlib.sha256((root / "embeddings" / "stonetex.safetensors").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "stonetex: {digest}"' in json.loads(result["info"])["infotexts"][0]


def test_cmd_flags_name_the_folders(client, folders):
    root, _ = folders
    flags = client.request("GET", "/sdapi/v1/cmd-flags")
    assert flags["lora_dir"] == str(root / "loras") and flags["embeddings_dir"] == str(root / "embeddings")


# --- an SDXL model: its LoRAs, and its embeddings listed as loaded, SD1's as skipped --------------------------------


@pytest.fixture(scope="module")
def sdxl_client(tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline
    from sdxl_fixtures import G_WIDTH, L_WIDTH, sdxl_folder, write_sdxl_checkpoint

    root = tmp_path_factory.mktemp("sdxl_networks")
    ref = StableDiffusionXLPipeline.from_pretrained(str(sdxl_folder()), local_files_only=True)
    lora = kohya_lora(ref.unet, ref.text_encoder, seed=6, text_encoder_2=ref.text_encoder_2)
    save(root / "loras" / "xlbricks.safetensors", lora)
    embeddings = root / "embeddings"
    embeddings.mkdir()
    parts = {"clip_l": torch.randn(3, L_WIDTH), "clip_g": torch.randn(3, G_WIDTH)}
    save_file(parts, str(embeddings / "xlstone.safetensors"))
    save_file({"emb_params": torch.randn(2, TEXT_WIDTH)}, str(embeddings / "stonetex.safetensors"))
    model = write_sdxl_checkpoint(root / "models" / "xl.safetensors")
    srv = start_server(model, extra_args=("--lora-dir", str(root / "loras"), "--embeddings-dir", str(embeddings)))
    yield SDClient(srv.url, timeout=120), root
    srv.stop()


def test_sdxl_model_lists_sdxl_embeddings_as_loaded_and_sd1_ones_as_skipped(sdxl_client):
    from sdxl_fixtures import G_WIDTH, L_WIDTH

    client, _ = sdxl_client
    listing = client.request("GET", "/sdapi/v1/embeddings")
    assert listing["loaded"] == {
        "xlstone": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": L_WIDTH + G_WIDTH,
                    "vectors": 3}
    }  # fmt: skip
    assert list(listing["skipped"]) == ["stonetex"]


def test_sdxl_lora_tag_and_embedding_over_the_server(sdxl_client):
    client, root = sdxl_client
    plain = client.txt2img({**BASE, "prompt": "a red brick wall"})
    tagged = client.txt2img({**BASE, "prompt": "a red xlstone wall <lora:xlbricks:0.8>"})
    assert np.abs(pixels(tagged["images"][0]) - pixels(plain["images"][0])).mean() > 1.0
    text = json.loads(tagged["info"])["infotexts"][0]
    data = (root / "loras" / "xlbricks.safetensors").read_bytes()
    addnet = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]
    digest = hashlib.sha256((root / "embeddings" / "xlstone.safetensors").read_bytes()).hexdigest()[:12]
    assert f'Lora hashes: "xlbricks: {addnet}"' in text and f'TI hashes: "xlstone: {digest}"' in text
    assert "Lora hashes" not in json.loads(plain["info"])["infotexts"][0]
