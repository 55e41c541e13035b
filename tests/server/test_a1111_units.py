"""The A1111-compatibility pieces of the server on their own, without a server: resize modes, upscalers, the
options store, styles, infotext, the refusal table, the memory report."""

from __future__ import annotations

import pytest
from PIL import Image
from server_utils import sample_image
from test_a1111_fields import IMG2IMG, TXT2IMG

from sd_core import samplers
from sd_core.server import listings, options, refusals, upscalers
from sd_core.server.errors import ApiError
from sd_core.server.img2img import fit
from sd_core.server.prepare import apply_infotext, floor_side
from sd_core.server.resize import flatten, to_mask
from sd_core.server.sampling_fields import engine_strength
from sd_core.server.schemas import Img2ImgRequest, Txt2ImgRequest
from sd_core.server.styles import StyleFile, merge, read_styles

LANCZOS = Image.Resampling.LANCZOS


def test_crop_and_resize_covers_then_crops_the_centre():
    img = sample_image(90, 60)
    out = fit(1, img, 64, 64)
    covered = img.resize((96, 64), LANCZOS)
    assert out.size == (64, 64) and out.tobytes() == covered.crop((16, 0, 80, 64)).tobytes()


def test_resize_and_fill_fits_then_stretches_the_edges():
    img = sample_image(60, 90)
    out = fit(2, img, 64, 64)
    fitted = img.resize((42, 64), LANCZOS)
    assert out.crop((11, 0, 53, 64)).tobytes() == fitted.tobytes()
    left = {out.crop((x, 0, x + 1, 64)).tobytes() for x in range(11)}
    right = {out.crop((x, 0, x + 1, 64)).tobytes() for x in range(53, 64)}
    assert len(left) == 1 and len(right) == 1 and left != right
    mask = fit(2, Image.new("L", (60, 90), 255), 64, 64)
    assert mask.mode == "L" and mask.getextrema() == (255, 255)


def test_masks_and_transparency():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 200))
    rgba.putpixel((1, 0), (255, 0, 0, 100))
    hard, soft = to_mask(rgba, True), to_mask(rgba, False)
    assert hard.getpixel((0, 0)) == 255 and hard.getpixel((1, 0)) == 0 and soft.getpixel((1, 0)) == 100
    opaque = Image.new("RGBA", (8, 8), (255, 255, 255, 255))
    assert to_mask(opaque, True).getextrema() == (255, 255)  # no transparency: its luminance
    assert flatten(rgba, "#00ff00").getpixel((5, 5)) == (0, 255, 0)


def test_upscalers_floor_the_target_to_multiples_of_8():
    img = sample_image(61, 45)
    assert upscalers.REGISTRY["Lanczos"].upscale(img, 2).size == (120, 88)
    assert upscalers.REGISTRY["Nearest"].upscale(img, 0.5).size == (24, 16)
    assert upscalers.resize(img, 100, 90, "None").tobytes() == img.resize((100, 90), LANCZOS).tobytes()
    with pytest.raises(ApiError) as caught:
        upscalers.get("ESRGAN_4x", "upscaler_1")
    assert caught.value.field == "upscaler_1" and "Lanczos" in caught.value.detail


@pytest.mark.parametrize(
    "key, value, ok",
    [
        ("send_seed", False, True),
        ("send_seed", 1, False),
        ("jpeg_quality", 90.0, True),
        ("jpeg_quality", True, False),
        ("quicksettings_list", ["sd_vae"], True),
        ("upscaler_for_img2img", "Nearest", True),
        ("upscaler_for_img2img", "ESRGAN_4x", False),
        ("CLIP_stop_at_last_layers", 13, False),
        ("img2img_background_color", "not a colour", False),
        ("n_rows", float("nan"), False),
        ("no_such_key", 1, False),
        ("sd_core_model_defaults", {"cfg_scale": 1}, True),  # read only: accepted, not kept
    ],
)
def test_option_values(key, value, ok):
    if ok:
        options.check_value(key, value)
    else:
        with pytest.raises(ApiError) as caught:
            options.check_value(key, value)
        assert caught.value.status == 422 and caught.value.field == key


def test_style_rules(tmp_path):
    assert merge("{prompt}, by a painter", "a cat") == "a cat, by a painter"
    assert merge(" oil ", " a cat ") == "a cat, oil" and merge("", "a cat ") == "a cat" and merge("oil", "") == "oil"
    old = tmp_path / "old.csv"
    old.write_text("name,text\nsepia,sepia tone\n#off,x\n", encoding="utf-8")
    assert [(s.name, s.prompt, s.negative_prompt) for s in read_styles(old).values()] == [("sepia", "sepia tone", "")]
    styles = StyleFile(old)
    assert styles.apply(["sepia", "nope"], "a cat", "") == ("a cat, sepia tone", "", ["nope"])
    old.write_text("name,prompt,negative_prompt\nsepia,brown,grey\n", encoding="utf-8")
    assert styles.items() == [{"name": "sepia", "prompt": "brown", "negative_prompt": "grey"}]  # read again
    assert StyleFile(None).apply(["x"], "p", "n") == ("p", "n", ["x"])


def test_infotext_fills_what_the_request_leaves_out():
    text = "a cat\nNegative prompt: dog\nSteps: 7, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 9, "
    text += "Size: 64x96, Clip skip: 2, Tiling: xy"
    req = apply_infotext(Txt2ImgRequest.model_validate({"infotext": text, "seed": 3}))
    assert (req.prompt, req.negative_prompt, req.steps, req.seed, req.width, req.height) == (
        "a cat",
        "dog",
        7,
        3,
        64,
        96,
    )
    assert (req.sampler_name, req.scheduler, req.cfg_scale, req.tiling) == ("DPM++ 2M", "Karras", 4.0, "xy")
    assert req.override_settings == {"CLIP_stop_at_last_layers": 2} and req.enable_hr is False
    hires = apply_infotext(
        Txt2ImgRequest.model_validate({"infotext": text + ", Denoising strength: 0.5, Hires upscale: 2"})
    )
    assert hires.enable_hr is True
    extras = ", Variation seed: 9, Variation seed strength: 0.25, Seed resize from: 32x48, Eta: 0.5, Sigma churn: 1"
    varied = apply_infotext(Txt2ImgRequest.model_validate({"infotext": text + extras}))
    assert (varied.subseed, varied.subseed_strength, varied.seed_resize_from_w, varied.seed_resize_from_h) == (
        9, 0.25, 32, 48,
    )  # fmt: skip
    assert varied.override_settings["eta_ancestral"] == 0.5 and varied.override_settings["s_churn"] == 1.0
    for bad in ("x\nSteps: many, Sampler: Euler, Seed: 1", "x\nSteps: 5000, Sampler: Euler, Seed: 1"):
        with pytest.raises(ApiError) as caught:
            apply_infotext(Img2ImgRequest.model_validate({"infotext": bad, "init_images": ["x"]}))
        assert caught.value.field == "infotext"


def test_sizes_floor_to_multiples_of_8():
    assert [floor_side("width", v) for v in (8, 15, 63, 64, 71, 72, 8192)] == [8, 8, 56, 64, 64, 72, 8192]
    with pytest.raises(ApiError):
        floor_side("width", 7)


def test_a_strength_too_low_for_one_step_runs_one_step():
    for steps in range(1, 120):
        for strength in (1e-9, 0.01, 0.3, 1.0 / steps, 0.999):
            lifted = engine_strength(strength, steps)
            assert int(steps * lifted) >= 1 and lifted <= 1.0
            if int(steps * strength) >= 1:
                assert lifted == strength
            else:
                assert int(steps * lifted) == 1


def test_the_refusal_table_names_a1111_fields():
    fields = set(TXT2IMG) | set(IMG2IMG)
    for rule in (*refusals.REFUSED, *refusals.IGNORED):
        assert rule.field in fields, rule.field
    for option, names in refusals.TAKES.items():  # the server only hands the engine options its samplers take
        assert all(option in samplers.resolve(name).options for name in names), option


def test_cuda_memory_in_a1111s_shape():
    stats = {"allocated_bytes.all.current": 5, "allocated_bytes.all.peak": 9, "num_ooms": 1}
    cuda = listings.cuda_stats((3, 10), stats)
    assert cuda["system"] == {"free": 3, "used": 7, "total": 10}
    assert cuda["allocated"] == {"current": 5, "peak": 9} and cuda["events"] == {"retries": 0, "oom": 1}
    assert set(cuda) == {"system", "active", "allocated", "reserved", "inactive", "events"}
    ram = listings.ram()
    assert "error" in ram or ram["free"] + ram["used"] == ram["total"]
