"""Every field of A1111's `StableDiffusionTxt2ImgProcessingAPI` and `StableDiffusionImg2ImgProcessingAPI` (web UI
1.10), sent one at a time with a value other than its default, against a real server: each one changes the result
as A1111 would, or is refused with a 4xx naming it, or changes nothing because A1111 ignores it too in that request
(then the server lists it in `info["ignored_fields"]`). The reason for each "ignored" is in the table below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from server_utils import SIZE, open_b64, png_b64, sample_image, start_server, tiny_checkpoint

from sd_core.client import ClientError, SDClient

pytestmark = pytest.mark.server

# A1111 1.10's API models, field by field (modules/api/models.py builds them from the processing classes).
COMMON = [
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
    "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength",
    "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings",
    "override_settings_restore_afterwards", "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks",
    "firstpass_image", "comments", "sampler_index", "script_name", "script_args", "send_images", "save_images",
    "alwayson_scripts", "force_task_id", "infotext",
]  # fmt: skip
TXT2IMG = COMMON + [
    "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
    "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt",
]  # fmt: skip
IMG2IMG = COMMON + [
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur",
    "mask_round", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
    "initial_noise_multiplier", "latent_mask", "include_init_images",
]  # fmt: skip

BASE = {"prompt": "a red brick wall", "width": SIZE, "height": SIZE, "steps": 3, "seed": 5, "cfg_scale": 5.0}
BASE["sampler_name"] = "Euler"
CHANGES, REFUSED, IGNORED = "changes", "refused", "ignored"


def small_mask(soft: bool = False) -> Image.Image:
    """The lower right quarter to repaint; `soft`: as an RGBA PNG whose alpha fades, like a painted mask."""
    if not soft:
        mask = Image.new("L", (SIZE, SIZE), 0)
        mask.paste(255, (SIZE // 2, SIZE // 2, SIZE, SIZE))
        return mask
    rgba = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    rgba.putdata([(255, 255, 255, min(255, 4 * (x + y))) for y in range(SIZE) for x in range(SIZE)])
    return rgba


INIT = png_b64(sample_image())
OTHER = png_b64(sample_image().transpose(Image.Transpose.ROTATE_90))
WIDE = png_b64(sample_image(96, SIZE))
MASK = png_b64(small_mask())
SOFT_MASK = png_b64(small_mask(soft=True))
TAG = {"prompt": "a red brick wall <hypernet:bricks:0.8>"}
NO_SAMPLER = {"sampler_name": None}
INPAINT = {"mask": MASK, "inpaint_full_res": False, "mask_blur": 0, "inpainting_fill": 1}
ONLY_MASKED = {"mask": MASK, "inpaint_full_res": True, "mask_blur": 0}
CHURN = {"s_churn": 1.0}  # Euler's s_tmin, s_tmax and s_noise shape its churn

# field: (value, expectation, what the baseline and the variant both carry, why it is ignored where it is)
CASES: dict[str, tuple] = {
    "prompt": ("a blue sky", CHANGES, {}),
    "negative_prompt": ("blurry", CHANGES, {}),
    "styles": (["bricky"], CHANGES, {}),
    "seed": (6, CHANGES, {}),
    "subseed": (77, IGNORED, {}, "A1111 uses it only with a subseed_strength"),
    "subseed_strength": (0.5, CHANGES, {}),
    "seed_resize_from_h": (32, IGNORED, {}, "A1111 resizes the seed only when both sizes are above 0"),
    "seed_resize_from_w": (32, IGNORED, {}, "A1111 resizes the seed only when both sizes are above 0"),
    "sampler_name": ("Euler a", CHANGES, {}),
    "scheduler": ("karras", CHANGES, {}),
    "batch_size": (2, CHANGES, {}),
    "n_iter": (2, CHANGES, {}),
    "steps": (5, CHANGES, {}),
    "cfg_scale": (9.0, CHANGES, {}),
    "width": (72, CHANGES, {}),
    "height": (72, CHANGES, {}),
    "restore_faces": (True, REFUSED, {}),
    "tiling": (True, CHANGES, {}),
    "do_not_save_samples": (True, IGNORED, {}, "A1111 sets it from save_images; it only concerns its disk"),
    "do_not_save_grid": (True, IGNORED, {}, "as do_not_save_samples"),
    "eta": (0.5, IGNORED, {}, "Euler takes no eta (A1111 passes eta only to samplers that take it)"),
    "s_min_uncond": (0.5, REFUSED, {}),
    "s_churn": (1.0, CHANGES, {}),
    "s_tmax": (1.0, CHANGES, CHURN),
    "s_tmin": (0.5, CHANGES, CHURN),
    "s_noise": (0.9, CHANGES, CHURN),
    "override_settings": ({"CLIP_stop_at_last_layers": 2}, CHANGES, {}),
    "override_settings_restore_afterwards": (False, IGNORED, {}, "no override_settings to keep"),
    "refiner_checkpoint": ("no_such_refiner.safetensors", REFUSED, {}),  # honoured: tests/server/test_sdxl_server.py
    "refiner_switch_at": (0.5, IGNORED, {}, "A1111 switches only to a refiner_checkpoint"),
    "disable_extra_networks": (True, CHANGES, TAG),
    "firstpass_image": (INIT, IGNORED, {}, "A1111 uses it only for txt2img's hires fix"),
    "comments": ({"note": "x"}, IGNORED, {}, "A1111 replaces it with its own comments"),
    "sampler_index": ("Euler a", CHANGES, NO_SAMPLER),
    "script_name": ("X/Y/Z plot", REFUSED, {}),
    "script_args": ([1, 2], IGNORED, {}, "A1111 uses script_args only for a script_name"),
    "send_images": (False, CHANGES, {}),
    "save_images": (True, IGNORED, {}, "A1111 saves a copy on its own disk; the response is the same"),
    "alwayson_scripts": ({"Self Attention Guidance": {"args": [True]}}, REFUSED, {}),  # ControlNet: its own tests
    "force_task_id": ("task-1", IGNORED, {}, "names A1111's internal task; the response is the same"),
    "infotext": ("a blue sky\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 5, Size: 64x64", CHANGES, {"prompt": None}),
}
TXT2IMG_CASES: dict[str, tuple] = {
    "denoising_strength": (0.3, IGNORED, {}, "txt2img uses it only for hires fix"),
    "enable_hr": (True, CHANGES, {}),
    "firstphase_width": (72, CHANGES, {}),
    "firstphase_height": (72, CHANGES, {}),
    **{
        name: (value, IGNORED, {}, "A1111 uses the hires settings only with enable_hr")
        for name, value in (
            ("hr_scale", 3.0),
            ("hr_upscaler", "Latent"),
            ("hr_second_pass_steps", 5),
            ("hr_resize_x", 128),
            ("hr_resize_y", 128),
            ("hr_checkpoint_name", "model.safetensors"),
            ("hr_sampler_name", "Euler a"),
            ("hr_scheduler", "karras"),
            ("hr_prompt", "a blue sky"),
            ("hr_negative_prompt", "blurry"),
        )
    },
}
IMG2IMG_CASES: dict[str, tuple] = {
    "init_images": ([OTHER], CHANGES, {}),
    "resize_mode": (3, CHANGES, {"init_images": [WIDE]}),
    "denoising_strength": (0.4, CHANGES, {}),
    "image_cfg_scale": (1.5, IGNORED, {}, "A1111 uses it only with instruct-pix2pix models"),
    "mask": (MASK, CHANGES, {}),
    "mask_blur_x": (8, REFUSED, {**INPAINT, "mask_blur": None}),
    "mask_blur_y": (8, REFUSED, {**INPAINT, "mask_blur": None}),
    "mask_blur": (8, CHANGES, {**INPAINT, "mask_blur": None}),
    "mask_round": (False, CHANGES, {**INPAINT, "mask": SOFT_MASK}),
    "inpainting_fill": (2, CHANGES, INPAINT),
    "inpaint_full_res": (True, CHANGES, INPAINT),
    "inpaint_full_res_padding": (16, CHANGES, ONLY_MASKED),
    "inpainting_mask_invert": (1, CHANGES, INPAINT),
    "initial_noise_multiplier": (0.5, CHANGES, {}),
    "latent_mask": (MASK, REFUSED, INPAINT),
    "include_init_images": (True, CHANGES, {}),
}
I2I_BASE = {**BASE, "init_images": [INIT], "denoising_strength": 0.75, "steps": 4}  # 3 steps run


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    styles = root / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nbricky,"{prompt}, weathered",smooth\n', encoding="utf-8")
    extra = ("--styles", str(styles), "--max-pixels", str(4 * SIZE * SIZE))
    server = start_server(tiny_checkpoint(Path(root) / "model.safetensors"), extra_args=extra)
    yield SDClient(server.url, timeout=120)
    server.stop()


def outcome(result: dict) -> tuple:
    """What a client sees of a generation: the images' pixels and sizes, and whether init images are echoed."""
    images = tuple((img.size, img.convert("RGB").tobytes()) for img in map(open_b64, result["images"]))
    return images, result["parameters"].get("init_images") is not None


def merged(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        out.update(part)
    return out


def check_field(client: SDClient, kind: str, base: dict, name: str, case: tuple, baselines: dict) -> None:
    value, expect, extra = case[:3]
    call = client.txt2img if kind == "txt2img" else client.img2img
    key = json.dumps(extra, sort_keys=True)
    if key not in baselines:
        baselines[key] = call(merged(base, extra))
    baseline = baselines[key]
    variant = merged(base, extra, {name: value})
    if expect == REFUSED:
        with pytest.raises(ClientError) as caught:
            call(variant)
        err = caught.value
        assert 400 <= (err.status or 0) < 500, (name, err.status, err.message)
        assert err.field and err.field.split(".")[0] == name, (name, err.field, err.message)
        return
    result = call(variant)
    info = json.loads(result["info"])
    if expect == CHANGES:
        assert outcome(result) != outcome(baseline), f"{kind}: {name}={value!r} changed nothing"
        assert name not in info.get("ignored_fields", [])
    else:
        assert outcome(result) == outcome(baseline), f"{kind}: {name}={value!r} should change nothing ({case[3]})"
        assert name in info.get("ignored_fields", []), (name, info.get("ignored_fields"))


def test_the_tables_cover_every_a1111_field():
    assert set(CASES) | set(TXT2IMG_CASES) == set(TXT2IMG)
    assert set(CASES) | set(IMG2IMG_CASES) == set(IMG2IMG)
    for case in [*CASES.values(), *TXT2IMG_CASES.values(), *IMG2IMG_CASES.values()]:
        assert case[1] in (CHANGES, REFUSED, IGNORED) and (case[1] != IGNORED or case[3])


def test_the_schema_declares_every_a1111_field(client):
    schemas = client.request("GET", "/openapi.json")["components"]["schemas"]
    for model, fields in (("Txt2ImgRequest", TXT2IMG), ("Img2ImgRequest", IMG2IMG)):
        assert set(fields) <= set(schemas[model]["properties"]), set(fields) - set(schemas[model]["properties"])


@pytest.mark.parametrize("name", sorted({*CASES, *TXT2IMG_CASES}))
def test_txt2img_field(client, name, txt2img_baselines):
    case = TXT2IMG_CASES.get(name) or CASES[name]
    check_field(client, "txt2img", BASE, name, case, txt2img_baselines)


@pytest.mark.parametrize("name", sorted({*CASES, *IMG2IMG_CASES}))
def test_img2img_field(client, name, img2img_baselines):
    case = IMG2IMG_CASES.get(name) or CASES[name]
    check_field(client, "img2img", I2I_BASE, name, case, img2img_baselines)


@pytest.fixture(scope="module")
def txt2img_baselines() -> dict:
    return {}


@pytest.fixture(scope="module")
def img2img_baselines() -> dict:
    return {}


def test_a1111_own_test_request(client):
    """A1111's own API test request (test/test_txt2img.py) sends eta 0 with Euler a: honoured, which makes Euler a
    deterministic, Euler itself (A1111 would say "Eta: 0" in the infotext too)."""
    request = {
        "batch_size": 1, "cfg_scale": 7, "denoising_strength": 0, "enable_hr": False, "eta": 0,
        "firstphase_height": 0, "firstphase_width": 0, "height": 64, "n_iter": 1, "negative_prompt": "",
        "prompt": "example prompt", "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
        "sampler_index": "Euler a", "seed": 3, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
        "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64,
    }  # fmt: skip
    ancestral = client.txt2img(request)
    assert "Eta: 0" in json.loads(ancestral["info"])["infotexts"][0]
    assert outcome(ancestral) == outcome(client.txt2img({**request, "sampler_index": "Euler"}))
    assert outcome(ancestral) != outcome(client.txt2img({**request, "eta": None}))
    euler = client.txt2img({**request, "eta": 1.0, "sampler_index": "Euler"})
    assert "eta" in json.loads(euler["info"])["ignored_fields"]


@pytest.mark.parametrize(
    "name, value",
    [("mask_blur", 8), ("mask_blur_x", 8), ("mask_round", False), ("inpainting_fill", 2), ("inpaint_full_res", False)]
    + [("inpaint_full_res_padding", 16), ("inpainting_mask_invert", 1), ("latent_mask", MASK)],
)
def test_inpainting_fields_without_a_mask_change_nothing(client, name, value, img2img_baselines):
    """As in A1111: without a mask, img2img has nothing these fields act on."""
    check_field(client, "img2img", I2I_BASE, name, (value, IGNORED, {}, "used only with a mask"), img2img_baselines)


def test_mask_blur_sets_both_directions(client, img2img_baselines):
    case = (8, IGNORED, INPAINT, "mask_blur sets mask_blur_x and mask_blur_y, as A1111's property does")
    check_field(client, "img2img", I2I_BASE, "mask_blur_x", case, img2img_baselines)


def test_seed_resize_with_both_sizes(client):
    resized = client.txt2img({**BASE, "seed_resize_from_w": 32, "seed_resize_from_h": 32})
    info = json.loads(resized["info"])
    assert "Seed resize from: 32x32" in info["infotexts"][0]
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (32, 32)
    assert outcome(resized) != outcome(client.txt2img(BASE))
    same = client.txt2img({**BASE, "seed_resize_from_w": SIZE, "seed_resize_from_h": SIZE})  # the size itself
    assert outcome(same) == outcome(client.txt2img(BASE))
    with pytest.raises(ClientError) as caught:  # under one latent cell
        client.txt2img({**BASE, "seed_resize_from_w": 4, "seed_resize_from_h": 32})
    assert caught.value.field == "seed_resize_from_w"


def test_variation_seeds_keep_the_seed_and_count_the_subseed(client):
    request = {**BASE, "seed": 5, "subseed": 40, "subseed_strength": 0.3, "batch_size": 2, "n_iter": 2}
    info = json.loads(client.txt2img(request)["info"])
    assert info["all_seeds"] == [5, 5, 5, 5] and info["all_subseeds"] == [40, 41, 42, 43]
    assert info["subseed_strength"] == 0.3
    assert [text.split("Variation seed: ")[1].split(",")[0] for text in info["infotexts"]] == ["40", "41", "42", "43"]
    alone = client.txt2img({**BASE, "seed": 5, "subseed": 42, "subseed_strength": 0.3})
    assert outcome(alone)[0][0] == outcome(client.txt2img(request))[0][2]


def test_sampler_options_from_the_settings_as_a1111(client):
    """A1111 takes eta from `eta_ancestral` when the request leaves it out, and a churn setting other than 0 over the
    request's; an infotext's "Eta" sets that setting."""
    base = {**BASE, "sampler_name": "Euler a"}
    eta0 = outcome(client.txt2img({**base, "eta": 0}))
    assert outcome(client.txt2img({**base, "override_settings": {"eta_ancestral": 0.0}})) == eta0
    text = "a red brick wall\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 5, Size: 64x64, Eta: 0"
    assert outcome(client.txt2img({**base, "prompt": None, "infotext": text})) == eta0
    churned = outcome(client.txt2img({**BASE, "s_churn": 1.0}))
    assert outcome(client.txt2img({**BASE, "s_churn": 0.5, "override_settings": {"s_churn": 1.0}})) == churned
