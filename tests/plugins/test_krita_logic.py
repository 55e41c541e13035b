"""The Krita plugin's Krita-free logic: planning, masks, resampling, BGRA, colour matching, request/response.

Plain pytest, no Krita. Oracles: straightforward per-pixel reference implementations written here, and PIL for
PNG files and resampling.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import random
import re
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "krita_plugin"))

from sd_krita import generation, regions, sizes  # noqa: E402
from sd_krita.regions import Rect, RegionError  # noqa: E402
from sd_krita.sd_client import add_lora  # noqa: E402
from sd_krita.settings import Settings  # noqa: E402


def noise(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(n))


def soft_disc(w: int, h: int, cx: float, cy: float, radius: float, edge: float) -> bytes:
    """A disc with a linear soft edge `edge` pixels wide: values between 0 and 255 like a feathered selection."""
    out = bytearray(w * h)
    for y in range(h):
        for x in range(w):
            d = ((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) ** 0.5
            out[y * w + x] = max(0, min(255, round((radius - d) / edge * 255)))
    return bytes(out)


# --- references ---------------------------------------------------------------------------------------------------


def ref_dilate(mask: bytes, w: int, h: int, r: int) -> bytes:
    out = bytearray(w * h)
    for y in range(h):
        for x in range(w):
            out[y * w + x] = max(
                mask[min(h - 1, max(0, yy)) * w + min(w - 1, max(0, xx))]
                for yy in range(y - r, y + r + 1)
                for xx in range(x - r, x + r + 1)
            )
    return bytes(out)


def ref_box(plane: list[int], w: int, h: int, r: int, vertical: bool) -> list[int]:
    n, out = 2 * r + 1, [0] * (w * h)
    for y in range(h):
        for x in range(w):
            if vertical:
                total = sum(plane[min(h - 1, max(0, y + k)) * w + x] for k in range(-r, r + 1))
            else:
                total = sum(plane[y * w + min(w - 1, max(0, x + k))] for k in range(-r, r + 1))
            out[y * w + x] = (total + n // 2) // n
    return out


def ref_blur(mask: bytes, w: int, h: int, feather: int) -> bytes:
    values = list(mask)
    for r in regions.feather_radii(feather):
        values = ref_box(ref_box(values, w, h, r, True), w, h, r, False)
    return bytes(values)


# --- planning -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, canvas",
    [
        (Rect(10, 10, 21, 13), Rect(0, 0, 100, 80)),
        (Rect(0, 0, 5, 5), Rect(0, 0, 100, 80)),  # at the corner: the rounded box shifts inside
        (Rect(95, 75, 5, 5), Rect(0, 0, 100, 80)),  # at the far corner
        (Rect(0, 0, 100, 80), Rect(0, 0, 100, 80)),  # the whole canvas, a multiple already
        (Rect(3, 2, 99, 59), Rect(0, 0, 102, 61)),  # wider than any multiple of 8 that fits: take the canvas
    ],
)
def test_round_box_multiple_of_8_inside_canvas_and_covering(box: Rect, canvas: Rect) -> None:
    out = regions.round_box(box, canvas)
    assert canvas.contains(out) and out.contains(box)
    for size, extent in ((out.w, canvas.w), (out.h, canvas.h)):
        assert size % 8 == 0 or size == extent
    assert out.w - box.w < 8 or out.w == canvas.w


def test_working_size_is_multiple_of_8_near_target_and_keeps_aspect() -> None:
    assert regions.working_size(512, 512, 512) == (512, 512)
    assert regions.working_size(480, 560, 512) == (480, 560)  # close enough: no resampling at all
    w, h = regions.working_size(100, 50, 512)  # small boxes are enlarged (more detail for the model)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 2) < 0.1 and 0.8 < w * h / 512**2 < 1.2
    w, h = regions.working_size(3000, 1000, 512)  # large ones shrunk
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 3) < 0.1 and 0.8 < w * h / 512**2 < 1.2
    assert regions.working_size(5, 5000, 512)[0] == 64  # never below SD's smallest size
    assert regions.working_size(160, 120, 64) == (88, 64)  # small target: the short side is lifted to 64


def test_plan_region_grows_feathers_and_clamps_to_canvas() -> None:
    plan = regions.plan_region(Rect(40, 30, 20, 10), 200, 100, grow=4, feather=6, margin=16, target=64)
    assert plan.selection == Rect(40, 30, 20, 10)
    assert plan.reach == Rect(30, 20, 40, 30)  # selection + grow + feather
    assert plan.box.contains(plan.reach.expand(16).intersect(plan.canvas))
    assert plan.box.w % 8 == 0 and plan.box.h % 8 == 0
    assert plan.work_w % 8 == 0 and plan.work_h % 8 == 0

    edge = regions.plan_region(Rect(-30, -30, 50, 40), 200, 100, grow=4, feather=6, margin=16)
    assert edge.selection == Rect(0, 0, 20, 10)  # the part inside the canvas
    assert edge.box.x == 0 and edge.box.y == 0 and edge.canvas.contains(edge.box)


@pytest.mark.parametrize("sel", [Rect(300, 10, 20, 20), Rect(-50, -50, 40, 40), Rect(10, 10, 0, 5)])
def test_selection_outside_canvas_is_a_clear_error(sel: Rect) -> None:
    with pytest.raises(RegionError, match="outside the canvas"):
        regions.plan_region(sel, 200, 100)


# --- masks --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_dilate_matches_reference_on_soft_masks(r: int) -> None:
    w, h = 23, 17
    mask = soft_disc(w, h, 8, 6, 4, 3)
    assert regions.dilate(mask, w, h, r) == ref_dilate(mask, w, h, r)


@pytest.mark.parametrize("feather", [1, 2, 4, 7])
def test_blur_matches_reference(feather: int) -> None:
    w, h = 21, 15
    mask = soft_disc(w, h, 10, 7, 5, 1)
    assert regions.blur(mask, w, h, feather) == ref_blur(mask, w, h, feather)


def test_feather_reaches_exactly_grow_plus_feather_and_keeps_the_core() -> None:
    w, h = 60, 50
    mask = bytearray(w * h)
    for y in range(20, 30):
        mask[y * w + 25 : y * w + 35] = b"\xff" * 10
    shaped = regions.shape_mask(bytes(mask), w, h, grow=3, feather=6)
    assert regions.nonzero_bounds(shaped, w, h) == Rect(25 - 9, 20 - 9, 10 + 18, 10 + 18)
    grown = [shaped[y * w + x] for y in range(20 - 3, 30 + 3) for x in range(25 - 3, 35 + 3)]
    assert set(grown) == {255}  # the grown selection is fully replaced; the fade lies outside it
    row = [shaped[25 * w + x] for x in range(35 + 3, 35 + 9)]
    assert row == sorted(row, reverse=True) and 0 < row[-1] < row[0] < 255  # a smooth ramp, no step


def test_mask_touching_canvas_edge_stays_solid_at_the_edge() -> None:
    w, h = 40, 30
    mask = bytearray(w * h)
    for y in range(h):
        mask[y * w : y * w + 10] = b"\xff" * 10  # selected along the left border
    shaped = regions.shape_mask(bytes(mask), w, h, grow=0, feather=6)
    assert all(shaped[y * w] == 255 for y in range(h))  # no fade towards the canvas border


def test_harden_covers_every_visible_alpha() -> None:
    soft = bytes(range(256))
    hard = regions.harden(soft)
    assert hard[0] == 0 and set(hard[1:]) == {255}


# --- resampling ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, new", [((40, 30), (64, 48)), ((64, 48), (24, 16)), ((33, 17), (33, 40))])
def test_resize_matches_pil_bilinear(size: tuple[int, int], new: tuple[int, int]) -> None:
    w, h = size
    data = bytes(v // 2 + 64 for v in noise(w * h * 3, 1))
    ours = regions.resize(data, w, h, 3, *new)
    theirs = Image.frombytes("RGB", size, data).resize(new, Image.Resampling.BILINEAR).tobytes()
    assert len(ours) == len(theirs)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 2


def test_resize_part_equals_crop_of_full_resize() -> None:
    w, h, nw, nh = 30, 20, 75, 50
    data = noise(w * h * 4, 2)
    full = regions.resize(data, w, h, 4, nw, nh)
    part = Rect(10, 7, 31, 22)
    assert regions.resize(data, w, h, 4, nw, nh, rows=part) == regions.crop(full, nw, 4, part)


def test_resize_back_and_forth_is_close() -> None:
    w, h = 48, 40
    img = bytes(x * 2 + y * 2 + c * 10 for y in range(h) for x in range(w) for c in range(3))
    up = regions.resize(img, w, h, 3, 96, 80)
    down = regions.resize(up, 96, 80, 3, w, h)
    assert max(abs(a - b) for a, b in zip(down, img, strict=True)) <= 3


# --- BGRA and layer pixels ----------------------------------------------------------------------------------------


def test_bgra_to_rgb_byte_order_and_white_flattening() -> None:
    pixels = bytes([10, 20, 30, 255, 10, 20, 30, 0, 0, 0, 255, 128])  # B, G, R, A
    assert regions.bgra_to_rgb(pixels) == bytes([30, 20, 10, 255, 255, 255, 255, 127, 127])


def test_rgb_to_bgra_orders_bytes_and_cleans_transparent_pixels() -> None:
    rgb = bytes([30, 20, 10, 1, 2, 3])
    assert regions.rgb_to_bgra(rgb, bytes([200, 0])) == bytes([10, 20, 30, 200, 0, 0, 0, 0])


def test_composite_alpha_is_the_mask_and_outside_is_transparent() -> None:
    cw, ch = 120, 90
    sel = Rect(50, 30, 20, 16)
    plan = regions.plan_region(sel, cw, ch, grow=3, feather=5, margin=10, target=64)
    box = plan.box
    selection = bytearray(box.w * box.h)
    for y in range(sel.y, sel.bottom):
        selection[(y - box.y) * box.w + sel.x - box.x : (y - box.y) * box.w + sel.right - box.x] = b"\xc0" * sel.w
    alpha = regions.shape_mask(bytes(selection), box.w, box.h, plan.grow, plan.feather)
    result = bytes([200, 100, 50]) * (plan.work_w * plan.work_h)
    layer = regions.composite(result, plan, alpha)
    assert plan.reach.contains(layer.rect)  # nothing outside the grown + feathered selection
    b, g, r, a = regions.split(layer.data, 4)
    inner = Rect(layer.rect.x - box.x, layer.rect.y - box.y, layer.rect.w, layer.rect.h)
    assert a == regions.crop(alpha, box.w, 1, inner)  # alpha = the shaped soft mask, byte for byte
    assert max(a) == 0xC0  # a partial selection stays partial
    visible = [i for i, v in enumerate(a) if v]
    assert all((r[i], g[i], b[i]) == (200, 100, 50) for i in visible)
    assert all(r[i] == g[i] == b[i] == 0 for i, v in enumerate(a) if not v)


def test_colour_match_removes_a_drift_measured_where_the_original_is_kept() -> None:
    n = 64 * 64
    rng = random.Random(3)
    original = bytes(rng.randrange(60, 180) for _ in range(n * 3))
    drifted = bytes(min(255, int(v * 1.1) + 12) if i % 3 == 0 else v for i, v in enumerate(original))
    keep = bytes([255] * (n // 2) + [0] * (n // 2))
    fit = regions.fit_colours(drifted, original, keep)
    assert fit is not None
    fixed = regions.apply_colours(drifted, fit)
    assert max(abs(a - b) for a, b in zip(fixed, original, strict=True)) <= 2
    assert regions.fit_colours(drifted, original, bytes(n)) is None  # nothing kept: nothing to measure
    same = regions.fit_colours(original, original, keep)  # no drift (a server that pastes back): the identity
    assert regions.apply_colours(drifted, same) == drifted


RED, BLUE = (200, 40, 40), (40, 60, 200)  # the surroundings, what the "model" draws into the mask
DRIFT = (30, -10, -30)  # the stub's tint over its whole image


def hue(rgb: tuple[float, ...]) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360


def stub_server(payload: dict, paste_back: bool) -> dict:
    """A server whose output colours are known: blue where the mask is white, the init image elsewhere, then
    DRIFT over the whole image (as an engine's VAE round trip tints everything). `paste_back`: the original is put
    back outside the mask afterwards (sd-core does that), so only the new content carries the drift."""
    init = Image.open(io.BytesIO(base64.b64decode(payload["init_images"][0]))).convert("RGB")
    mask = Image.open(io.BytesIO(base64.b64decode(payload["mask"]))).convert("L")
    out = Image.composite(Image.new("RGB", init.size, BLUE), init, mask)
    r, g, b = (band.point(lambda v, d=d: max(0, min(255, v + d))) for band, d in zip(out.split(), DRIFT, strict=True))
    out = Image.merge("RGB", (r, g, b))
    if paste_back:
        out = Image.composite(out, init, mask)
    return {"images": [base64.b64encode(pil_png(out)).decode()], "info": json.dumps({"seed": 9})}


def inpaint_blue_into_red(colour_match: bool, paste_back: bool) -> tuple[list[tuple[int, int, int]], bytes]:
    """The plugin's whole pixel path (capture -> request -> stub server -> result layer): the visible pixels of the
    result layer, and its alpha."""
    w, h = 128, 96
    settings = Settings(grow=4, feather=8, margin=32, resolution=128, colour_match=colour_match, seed=9)
    plan = regions.plan_region(Rect(44, 28, 40, 40), w, h, grow=4, feather=8, margin=32, target=128)
    box = plan.box
    image = bytes([RED[2], RED[1], RED[0], 255]) * (box.w * box.h)  # B, G, R, A
    disc = soft_disc(w, h, 64, 48, 20, 4)
    selection = regions.crop(disc, w, 1, box)
    req = generation.build_request(generation.Capture(plan, image, selection), settings)
    (candidate,) = generation.read_response(req, stub_server(req.payload, paste_back), settings)
    data, alpha = candidate.pixels.data, candidate.pixels.data[3::4]
    shown = [tuple(data[4 * i : 4 * i + 3][::-1]) for i, a in enumerate(alpha) if a == 255]
    return shown, alpha


def test_colour_matching_removes_the_drift_and_keeps_the_new_contents_hue() -> None:
    """Blue inpainted into red by a stub server whose image carries a known tint (DRIFT) everywhere, the surroundings
    included (no paste-back). Matching measures the tint on the surroundings the server was told to keep and
    removes it: the new content comes out as the blue drawn, within 2 levels per channel and 1 degree of hue.
    Without matching the tint stays. The old feather-band fit pulled blue towards red (issue 38)."""
    on, alpha = inpaint_blue_into_red(colour_match=True, paste_back=False)
    off, alpha_off = inpaint_blue_into_red(colour_match=False, paste_back=False)
    assert alpha == alpha_off and len(on) > 1000
    tinted = tuple(c + d for c, d in zip(BLUE, DRIFT, strict=True))
    assert set(off) == {tinted}  # matching off: the drift is there
    assert max(abs(c - e) for px in on for c, e in zip(px, BLUE, strict=True)) <= 2  # matching on: removed
    assert all(abs(hue(px) - hue(BLUE)) <= 1.0 for px in on)
    assert abs(hue(tinted) - hue(BLUE)) > 5  # the drift was a visible hue shift, so the test can fail


def test_colour_matching_changes_nothing_when_the_server_pastes_the_original_back() -> None:
    """sd-core pastes the original back outside its mask: nothing to measure there, so matching is the identity
    (the new content keeps exactly what the model drew, its drift included)."""
    on, _ = inpaint_blue_into_red(colour_match=True, paste_back=True)
    off, _ = inpaint_blue_into_red(colour_match=False, paste_back=True)
    assert on == off


# --- request and response (real PNGs: written by PIL, read by PIL) -----------------------------------------------


def pil_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def capture_for(cw: int, ch: int, sel: Rect, settings: Settings) -> generation.Capture:
    plan = regions.plan_region(
        sel, cw, ch, grow=settings.grow, feather=settings.feather, margin=settings.margin, target=settings.resolution
    )
    box = plan.box
    image = bytes(v for y in range(box.h) for x in range(box.w) for v in (x % 256, y % 256, 90, 255))
    mask = bytearray(box.w * box.h)
    for y in range(max(sel.y, box.y), min(sel.bottom, box.bottom)):
        for x in range(max(sel.x, box.x), min(sel.right, box.right)):
            mask[(y - box.y) * box.w + x - box.x] = 255
    return generation.Capture(plan, image, bytes(mask))


def test_inpaint_request_payload() -> None:
    settings = Settings(prompt="a cat", seed=5, steps=3, candidates=2, grow=2, feather=4, margin=32, resolution=64)
    cap = capture_for(150, 100, Rect(60, 40, 30, 20), settings)
    req = generation.build_request(cap, settings)
    p = req.payload
    assert req.kind == "img2img"
    assert (p["width"], p["height"]) == (req.plan.work_w, req.plan.work_h)
    assert p["mask_blur"] == 0 and p["inpaint_full_res"] is False and p["batch_size"] == 2
    assert p["denoising_strength"] == settings.strength and p["prompt"] == "a cat" and p["seed"] == 5
    init = Image.open(io.BytesIO(base64.b64decode(p["init_images"][0])))
    mask = Image.open(io.BytesIO(base64.b64decode(p["mask"])))
    assert init.size == mask.size == (req.plan.work_w, req.plan.work_h)
    init, mask = init.convert("RGB"), mask.convert("L")  # opaque RGBA PNGs from the shared client's encoder
    assert set(mask.tobytes()) == {0, 255}
    box = req.plan.box  # the init image is the crop, B,G,R -> R,G,B, scaled
    expected = regions.resize(regions.bgra_to_rgb(cap.image), box.w, box.h, 3, req.plan.work_w, req.plan.work_h)
    assert init.tobytes() == expected
    assert generation.build_request(cap, settings, strength=1.0).payload["denoising_strength"] == 1.0
    # colours are matched where the server keeps the original: mask 0, and no repainted pixel within 8 px
    w, h, hard = req.plan.work_w, req.plan.work_h, mask.tobytes()
    kept = [i for i, k in enumerate(req.keep) if k]
    assert len(kept) > 64 and set(req.keep) == {0, 255}
    for i in kept:
        x, y = i % w, i // w
        near = [
            hard[yy * w + xx]
            for yy in range(max(0, y - 8), min(h, y + 9))
            for xx in range(max(0, x - 8), min(w, x + 9))
        ]
        assert max(near) == 0, f"pixel {x},{y} is kept but lies within 8 px of the repainted area"
    far = [i for i in range(w * h) if i not in set(kept)]
    assert all(
        any(hard[yy * w + xx] for yy in range(max(0, i // w - 8), min(h, i // w + 9))
            for xx in range(max(0, i % w - 8), min(w, i % w + 9)))
        for i in far
    ), "every pixel 8 px or more from the repainted area is kept"  # fmt: skip
    assert generation.build_request(cap, Settings(**{**settings.__dict__, "colour_match": False})).keep is None


def test_default_settings_send_no_cfg_scale() -> None:
    """No CFG unless the user chose one: the server then uses the model's own (the built-in model's 3)."""
    plan = regions.plan_canvas(100, 60, target=64)
    default = generation.build_request(generation.Capture(plan, None, None), Settings(resolution=64)).payload
    assert "cfg_scale" not in default
    chosen = generation.build_request(generation.Capture(plan, None, None), Settings(resolution=64, cfg_scale=6.0))
    assert chosen.payload["cfg_scale"] == 6.0
    inpaint = capture_for(150, 100, Rect(60, 40, 30, 20), Settings(resolution=64))
    assert "cfg_scale" not in generation.build_request(inpaint, Settings(resolution=64)).payload


def test_generate_without_selection_is_txt2img_over_the_canvas() -> None:
    settings = Settings(prompt="a sky", resolution=64)
    plan = regions.plan_canvas(100, 60, target=64)
    req = generation.build_request(generation.Capture(plan, None, None), settings)
    assert req.kind == "txt2img" and "init_images" not in req.payload and "mask" not in req.payload
    assert set(req.alpha) == {255} and len(req.alpha) == 100 * 60


def test_chosen_loras_become_prompt_tags() -> None:
    plan = regions.plan_canvas(100, 60, target=64)
    settings = Settings(prompt="a sky", loras="clouds:0.8, haze:-0.5", resolution=64)
    payload = generation.build_request(generation.Capture(plan, None, None), settings).payload
    assert payload["prompt"] == "a sky <lora:clouds:0.8> <lora:haze:-0.5>"


def test_a_lora_without_a_number_is_a_clear_error() -> None:
    plan = regions.plan_canvas(100, 60, target=64)
    with pytest.raises(RegionError, match="'clouds:lots'"):
        generation.build_request(generation.Capture(plan, None, None), Settings(loras="clouds:lots", resolution=64))


def test_adding_a_lora_replaces_its_weight_or_appends() -> None:
    assert add_lora("", "clouds", 0.8) == "clouds:0.8"
    assert add_lora("clouds:0.8, haze:1", "clouds", 0.5) == "haze:1, clouds:0.5"
    assert add_lora("haze", "clouds", 1.0) == "haze:1, clouds:1"


def test_empty_selection_is_a_clear_error() -> None:
    settings = Settings(resolution=64)
    cap = capture_for(100, 80, Rect(10, 10, 20, 20), settings)
    with pytest.raises(RegionError, match="empty"):
        generation.build_request(generation.Capture(cap.plan, cap.image, bytes(len(cap.selection))), settings)


def response_with(images: list[Image.Image], seeds: list[int]) -> dict:
    info = json.dumps({"seed": seeds[0], "all_seeds": seeds})
    return {"images": [base64.b64encode(pil_png(i)).decode() for i in images], "info": info, "parameters": {}}


def test_read_response_makes_named_layers_inside_the_mask() -> None:
    settings = Settings(prompt="a  red\nbrick wall", seed=-1, candidates=2, grow=2, feather=4, margin=8, resolution=64)
    cap = capture_for(150, 100, Rect(60, 40, 30, 20), settings)
    req = generation.build_request(cap, settings)
    size = (req.plan.work_w, req.plan.work_h)
    images = [Image.new("RGB", size, (250, 10, 10)), Image.new("RGB", size, (10, 250, 10)), Image.new("L", size)]
    out = generation.read_response(req, response_with(images, [11, 12, 13]), settings)
    assert [c.name for c in out] == ["a red brick wall (seed 11) #1", "a red brick wall (seed 12) #2"]
    assert [c.seed for c in out] == [11, 12]
    for cand in out:
        assert req.plan.reach.contains(cand.pixels.rect)
        assert len(cand.pixels.data) == cand.pixels.rect.w * cand.pixels.rect.h * 4


def test_read_response_rejects_wrong_size_and_garbage() -> None:
    settings = Settings(resolution=64)
    cap = capture_for(100, 80, Rect(10, 10, 20, 20), settings)
    req = generation.build_request(cap, settings)
    with pytest.raises(RegionError, match="requested"):
        generation.read_response(req, response_with([Image.new("RGB", (8, 8))], [1]), settings)
    with pytest.raises(RegionError, match="unreadable"):
        generation.read_response(req, {"images": ["bm90IGEgcG5n"]}, settings)
    with pytest.raises(RegionError, match="no images"):
        generation.read_response(req, {"images": []}, settings)


REGION_CODE = (
    str(REPO / "krita_plugin" / "sd_krita" / "regions.py"),
    str(REPO / "krita_plugin" / "sd_krita" / "generation.py"),
    str(REPO / "krita_plugin" / "sd_krita" / "control.py"),
)


def region_lines_run(fn):
    """(lines of the region code (`regions.py`, `generation.py`) that `fn` executes, `fn`'s result): counted with
    sys.settrace, a per-pixel loop in Python shows up as lines growing with the pixel count, with no clock involved.
    The PNG decoder of the shared stdlib client is left out: it undoes PNG's row filters byte by byte by design (0.2 s
    for a 512x512 image on the development machine)."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if event == "line" and frame.f_code.co_filename in REGION_CODE:
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = fn()
    finally:
        sys.settrace(previous)
    return count, result


def prepare_and_composite(selection: int, resolution: int) -> int:
    """Region-code lines executed preparing a square selection's request (with a control layer) and compositing a
    reply into it."""
    settings = Settings(grow=2, feather=4, margin=8, resolution=resolution, control_layer="Sketch", control_model="m")
    cap = capture_for(1024, 1024, Rect(300, 300, selection, selection), settings)
    cap = generation.Capture(cap.plan, cap.image, cap.selection, cap.image)  # the canvas as its own control layer
    preparing, req = region_lines_run(lambda: generation.build_request(cap, settings))
    size = (req.plan.work_w, req.plan.work_h)
    reply = response_with([Image.frombytes("RGB", size, noise(size[0] * size[1] * 3, 5))], [1])
    compositing, _ = region_lines_run(lambda: generation.read_response(req, reply, settings))
    return preparing + compositing


def test_region_work_has_no_per_pixel_python_loops() -> None:
    """A 400x400 selection at 512 (a 432x432 region) has 36x the pixels of a 40x40 one at 64 (72x72) and 6x the rows:
    the region code's Python lines may grow with the rows and columns (per-row work is fine), never with the pixels,
    so a 512x512 region stays fast in Krita. A structural check instead of a timing one (timings belong in
    benchmarks, not tests); one per-pixel loop added to `regions.merge` makes the ratio 38."""
    small = prepare_and_composite(40, 64)
    large = prepare_and_composite(400, 512)
    assert large < 16 * small, (small, large)


# --- settings and packaging ---------------------------------------------------------------------------------------


def test_settings_round_trip_and_bad_values() -> None:
    s = Settings(prompt="x", strength=0.3, steps=7, colour_match=False, source="layer")
    assert Settings.from_strings(s.to_strings()) == s
    chosen = Settings(cfg_scale=6.5, seed=12)
    assert Settings.from_strings(chosen.to_strings()) == chosen
    assert Settings().cfg_scale is None and Settings().to_strings()["cfg_scale"] == ""  # the model's own
    assert Settings.from_strings({"cfg_scale": ""}).cfg_scale is None
    assert Settings.from_strings({"cfg_scale": "lots"}).cfg_scale is None
    broken = Settings.from_strings({"steps": "many", "source": "elsewhere", "unknown": "1"})
    assert broken.steps == Settings().steps and broken.source == "visible"
    assert (
        Settings().size == sizes.FIT
        and Settings.from_strings(Settings(size="1216x832").to_strings()).size == "1216x832"
    )
    assert Settings.from_strings({"size": "big"}).size == sizes.FIT


# --- size choices: fit the region, or one of the model's sizes exactly -------------------------------------------

SDXL_SIZES = [[1024, 1024], [1152, 896], [896, 1152], [1216, 832], [832, 1216], [1344, 768], [768, 1344],
              [1536, 640], [640, 1536]]  # fmt: skip


def test_the_sizes_offered_are_the_servers_for_its_model() -> None:
    assert sizes.offered({"cfg_scale": 7.5, "sizes": SDXL_SIZES})[3] == (1216, 832)
    assert sizes.offered({"cfg_scale": 7.5}) == []  # other servers name none: only "fit"
    for bad in ("1024x1024", [[1024]], [[1024, "832"]], [[0, 512]], [[True, 512]], [[512, 512], 7]):
        assert sizes.offered({"sizes": bad}) == [], bad
    assert sizes.parse("1216x832") == (1216, 832) and sizes.key((832, 1216)) == "832x1216"
    for text in (sizes.FIT, "1216", "0x832", "ax8", "1216x832x1", "-8x8"):
        assert sizes.parse(text) is None, text


def test_a_chosen_size_is_the_working_size_and_the_box_takes_its_shape() -> None:
    plan = regions.plan_region(Rect(300, 200, 40, 40), 1000, 800, grow=4, feather=6, margin=16, target=512)
    sized = sizes.at_size(plan, (1216, 832))
    assert (sized.work_w, sized.work_h) == (1216, 832) and sized.reach == plan.reach
    box = sized.box  # widened around the region, not the region squashed
    assert box.h == plan.box.h and box.w == -(-plan.box.h * 1216 // 832) and box.contains(plan.box)
    assert abs(box.w / box.h - 1216 / 832) < 0.02
    tall = sizes.at_size(plan, (640, 1536)).box
    assert tall.w == plan.box.w and tall.h > plan.box.h and abs(tall.w / tall.h - 640 / 1536) < 0.02
    edge = sizes.at_size(regions.plan_region(Rect(0, 300, 40, 60), 1000, 800, margin=8), (1536, 640)).box
    assert edge.x == 0 and edge.contains(Rect(0, 300, 40, 60))  # shifted back inside the canvas
    cramped = sizes.at_size(regions.plan_region(Rect(10, 10, 60, 60), 200, 100, margin=8), (640, 1536)).box
    assert (cramped.y, cramped.h) == (0, 100)  # the canvas cannot give the shape: its whole height
    assert sizes.at_size(plan, None) == plan


def test_generate_at_a_chosen_size_is_txt2img_at_exactly_that_size() -> None:
    settings = Settings(prompt="a sky", size="1344x768")
    plan = sizes.at_size(regions.plan_canvas(1920, 1080, target=settings.resolution), sizes.parse(settings.size))
    req = generation.build_request(generation.Capture(plan, None, None), settings)
    assert (req.payload["width"], req.payload["height"]) == (1344, 768) and plan.box == Rect(0, 0, 1920, 1080)


def test_plugin_zip_layout(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    import build_krita_plugin

    path = build_krita_plugin.build_zip(tmp_path / "p.zip")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert "sd_krita.desktop" in names and "sd_krita/" in names and "sd_krita/__init__.py" in names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert zf.read("sd_krita/sd_client.py") == (REPO / "sd_core" / "client.py").read_bytes()
        desktop = zf.read("sd_krita.desktop").decode()
        assert "X-KDE-Library=sd_krita" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop


# --- what the user reads, and the tools -----------------------------------------------------------------------------

BUILTIN_EXCEPTIONS = [n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)]
EXCEPTION_NAME = re.compile(r"\b(?:\w*Error|\w*Exception|" + "|".join(set(BUILTIN_EXCEPTIONS) - {"Warning"}) + r")\b")


def errors_users_meet() -> list[BaseException]:
    import urllib.error

    from sd_krita.sd_client import ClientError, ServerUnavailable

    return [
        ServerUnavailable("cannot reach http://127.0.0.1:9: [Errno 111] Connection refused"),
        ServerUnavailable("cannot reach http://nohost:7860: [Errno -2] Name or service not known"),
        ServerUnavailable("cannot reach http://10.0.0.1:7860: timed out"),
        ServerUnavailable(f"cannot reach http://x: {urllib.error.URLError(ConnectionRefusedError(111, 'refused'))}"),
        ClientError("generation failed: RuntimeError: CUDA out of memory", 500),
        ClientError("prompt: LoraError: 'nosuch' not found", 422, "prompt"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        OSError(2, "No such file or directory"),
        KeyError("images"),
        ValueError("invalid literal for int() with base 10: 'x'"),
        TypeError("'NoneType' object is not subscriptable"),
        ZeroDivisionError("division by zero"),
        MemoryError(),
        RuntimeError(""),
    ]  # fmt: skip


@pytest.mark.parametrize("error", errors_users_meet(), ids=lambda e: type(e).__name__)
def test_errors_are_plain_words_without_errno_or_exception_names(error: BaseException) -> None:
    from sd_krita import messages

    text = messages.describe(error)
    assert text and "Errno" not in text and not EXCEPTION_NAME.search(text), text
    assert messages.plain(f"Server not available: {error}") == messages.plain(
        messages.plain(f"Server not available: {error}")
    )
    said = messages.plain(f"Server not available: {error}")
    assert "Errno" not in said and not EXCEPTION_NAME.search(said), said


def test_connection_failures_are_said_in_words() -> None:
    from sd_krita import messages
    from sd_krita.sd_client import ServerUnavailable

    refused = messages.describe(ServerUnavailable("cannot reach http://127.0.0.1:9: [Errno 111] Connection refused"))
    assert "nothing answers there" in refused and "http://127.0.0.1:9" in refused and "Start it" in refused
    unknown = messages.plain("cannot reach http://nohost: [Errno -2] Name or service not known")
    assert unknown == "cannot reach http://nohost: that host name is unknown"
    assert messages.plain("The server refused the request (prompt): LoRA 'x' is for SDXL") == (
        "The server refused the request (prompt): LoRA 'x' is for SDXL"
    )  # ordinary text is left alone


def test_layer_names_differ_on_reruns() -> None:
    from sd_krita.tools import unique_name

    taken = {"a red apple (seed 5)", "a red apple (seed 5) [2]", "Background"}
    assert unique_name("a red apple (seed 6)", taken) == "a red apple (seed 6)"
    assert unique_name("a red apple (seed 5)", taken) == "a red apple (seed 5) [3]"
    assert unique_name("Background", taken) == "Background [2]"


def test_refine_without_selection_is_img2img_of_the_canvas() -> None:
    settings = Settings(prompt="ink", resolution=64, strength=0.35)
    plan = regions.plan_canvas(96, 64, target=64)
    image = bytes(v for y in range(64) for x in range(96) for v in (x, y, 90, 255))
    req = generation.build_request(generation.Capture(plan, image, None), settings)
    p = req.payload
    assert req.kind == "img2img" and "mask" not in p and p["denoising_strength"] == 0.35
    init = Image.open(io.BytesIO(base64.b64decode(p["init_images"][0]))).convert("RGB")
    assert init.size == (plan.work_w, plan.work_h)
    assert init.tobytes() == regions.resize(regions.bgra_to_rgb(image), 96, 64, 3, plan.work_w, plan.work_h)
    assert set(req.alpha) == {255} and req.keep is None


@pytest.mark.parametrize("factor", [2, 4])
def test_upscale_requests_and_answers(factor: int) -> None:
    from sd_krita import tools

    rgb = bytes(v for y in range(30) for x in range(41) for v in (x * 6, y * 8, 100))
    req = tools.upscale_request(rgb, 41, 30, Settings(), factor, "Lanczos", sd_upscale=False)
    assert req.path == "/sdapi/v1/extra-single-image"
    assert req.payload["upscaling_resize"] == factor and req.payload["upscaler_1"] == "Lanczos"
    sent = Image.open(io.BytesIO(base64.b64decode(req.payload["image"]))).convert("RGB")
    assert sent.tobytes() == rgb
    assert (req.width, req.height) == (41 * factor // 8 * 8, 30 * factor // 8 * 8)  # A1111 floors to 8
    big = sent.resize((req.width, req.height), Image.Resampling.LANCZOS)
    pixels = tools.read_upscale(req, {"image": base64.b64encode(pil_png(big)).decode(), "html_info": ""})
    assert (pixels.rect.w, pixels.rect.h) == big.size
    r, g, b = big.split()
    assert pixels.data == regions.merge([b.tobytes(), g.tobytes(), r.tobytes(), b"\xff" * (big.width * big.height)])
    wrong = sent.resize((req.width + 8, req.height))
    with pytest.raises(RegionError, match="expected"):
        tools.read_upscale(req, {"image": base64.b64encode(pil_png(wrong)).decode()})
    sd = tools.upscale_request(rgb, 41, 30, Settings(strength=0.3, resolution=256), factor, "Nearest", sd_upscale=True)
    assert sd.path == "/sdapi/v1/img2img" and sd.payload["script_name"] == "SD upscale"
    assert sd.payload["script_args"] == [None, 64, "Nearest", factor] and sd.payload["denoising_strength"] == 0.3
    small = tools.upscale_request(rgb, 41, 30, Settings(resolution=64), factor, "Nearest", sd_upscale=True)
    assert small.payload["script_args"][1] == 16  # the overlap: a quarter of a small tile
    assert (sd.payload["width"], sd.payload["height"]) == (256, 256)  # the tile: Model size
    with pytest.raises(RegionError, match="2x or 4x"):
        tools.upscale_request(rgb, 41, 30, Settings(), 3, "Lanczos", False)


def test_history_keeps_candidates_newest_first_and_reruns_with_their_seed() -> None:
    from sd_krita import tools

    history = tools.History(limit=3)
    pixels = regions.LayerPixels(Rect(0, 0, 1, 1), b"\0\0\0\xff")
    settings = Settings(seed=-1, candidates=4, prompt="fog", strength=0.4)
    keys = [history.add(f"fog (seed {s})", s, "refine", settings, pixels).key for s in (11, 12, 13, 14)]
    assert [e.seed for e in history.entries] == [14, 13, 12]  # newest first, the oldest dropped
    again = history.get(keys[2]).rerun_settings()
    assert (again.seed, again.candidates, again.prompt, again.strength) == (13, 1, "fog", 0.4)
    assert settings.seed == -1  # the entry's own settings are not changed
    assert history.discard(keys[2]) and history.get(keys[2]) is None and not history.discard(keys[2])
    small = tools.History(limit=10, max_bytes=10)  # pixels count too: 4 bytes each here
    for seed in range(5):
        small.add("x", seed, "inpaint", settings, pixels)
    assert [e.seed for e in small.entries] == [4, 3]  # 8 bytes kept, a third entry would pass 10
    big = regions.LayerPixels(Rect(0, 0, 2, 2), bytes(16))
    small.add("y", 9, "refine", settings, big)
    assert [e.seed for e in small.entries] == [9]  # over the budget alone: the newest stays, the rest go


def test_a_chosen_style_is_sent_by_name() -> None:
    from sd_krita import tools

    plan = regions.plan_canvas(100, 60, target=64)
    styled = generation.build_request(generation.Capture(plan, None, None), Settings(resolution=64, style="ink"))
    assert styled.payload["styles"] == ["ink"]
    plain = generation.build_request(generation.Capture(plan, None, None), Settings(resolution=64))
    assert "styles" not in plain.payload
    listed = [{"name": "ink", "prompt": "{prompt}, ink", "negative_prompt": ""}, {"name": ""}, "junk", {"x": 1}]
    assert tools.style_names(listed) == ["ink"] and tools.style_names({"detail": "no"}) == []


# --- control layers -----------------------------------------------------------------------------------------------


def sketch_layer(w: int, h: int) -> bytes:
    """A transparent layer (B, G, R, A) with one black 4 px wide vertical stroke at x = 70..73, as drawn on a new
    layer, and a half-transparent grey dot at (80, 50)."""
    out = bytearray(w * h * 4)
    for y in range(h):
        for x in range(70, 74):
            out[4 * (y * w + x) : 4 * (y * w + x) + 4] = b"\0\0\0\xff"
    out[4 * (50 * w + 80) : 4 * (50 * w + 80) + 4] = b"\x80\x80\x80\x80"
    return bytes(out)


def control_settings(**changes) -> Settings:
    base = dict(prompt="a cat", seed=5, steps=3, grow=2, feather=4, margin=32, resolution=64, control_layer="Sketch",
                control_module="invert", control_model="tiny_cn [1a2b3c4d]", control_weight=0.7)  # fmt: skip
    return Settings(**{**base, **changes})


def with_control(cap: generation.Capture, layer: bytes, canvas_w: int) -> generation.Capture:
    """The capture with the control layer read over the plan's box, as document.read_control reads it."""
    return generation.Capture(cap.plan, cap.image, cap.selection, regions.crop(layer, canvas_w, 4, cap.plan.box))


def the_unit(payload: dict) -> dict:
    (unit,) = payload["alwayson_scripts"]["controlnet"]["args"]
    return unit


def test_control_unit_is_built_from_the_settings() -> None:
    """A chosen layer, module, model and weight become one unit of the A1111 ControlNet extension's API; the image
    is already at the working size, so the server is asked for no crop and no further resampling, and for no
    detected map among the answer's images (the candidates)."""
    settings = control_settings()
    cap = with_control(capture_for(150, 100, Rect(60, 40, 30, 20), settings), sketch_layer(150, 100), 150)
    req = generation.build_request(cap, settings)
    unit = the_unit(req.payload)
    assert {k: v for k, v in unit.items() if k != "image"} == {
        "enabled": True, "module": "invert", "model": "tiny_cn [1a2b3c4d]", "weight": 0.7,
        "resize_mode": "Just Resize", "pixel_perfect": True, "control_mode": "Balanced", "guidance_start": 0.0,
        "guidance_end": 1.0, "save_detected_map": False,
    }  # fmt: skip
    image = Image.open(io.BytesIO(base64.b64decode(unit["image"])))
    assert image.size == (req.plan.work_w, req.plan.work_h) == (req.payload["width"], req.payload["height"])
    # the rest of the request is the same as without a control layer
    plain = generation.build_request(capture_for(150, 100, Rect(60, 40, 30, 20), settings), settings).payload
    assert {k: v for k, v in req.payload.items() if k != "alwayson_scripts"} == plain
    assert "alwayson_scripts" not in plain
    for module in ("none", "scribble", "threshold", "canny"):
        payload = generation.build_request(cap, control_settings(control_module=module)).payload
        assert the_unit(payload)["module"] == module


def test_no_control_layer_sends_no_unit_and_a_missing_model_is_a_clear_error() -> None:
    cap = with_control(capture_for(150, 100, Rect(60, 40, 30, 20), Settings()), sketch_layer(150, 100), 150)
    plan = cap.plan
    no_layer = generation.build_request(generation.Capture(plan, cap.image, cap.selection), control_settings())
    assert "alwayson_scripts" not in no_layer.payload  # nothing read: no unit
    with pytest.raises(RegionError, match="Choose a ControlNet model"):
        generation.build_request(cap, control_settings(control_model=""))
    with pytest.raises(RegionError, match="Unknown control module"):
        generation.build_request(cap, control_settings(control_module="depth_midas"))
    with pytest.raises(RegionError, match="incomplete pixels for the control layer"):
        generation.build_request(generation.Capture(plan, cap.image, cap.selection, b"\0" * 12), control_settings())


def test_control_layer_is_cropped_and_scaled_like_the_image() -> None:
    """The control map covers exactly the region the init image covers (plan.box), at the same working size: a
    layer identical to the canvas gives a map identical to the init image; a transparent sketch layer is its black
    strokes on white, at the place the box and the scale put them (PIL's bilinear resize as the oracle)."""
    settings = control_settings(resolution=48)  # box 96x80 (selection, grown, context) -> 56x48: scaled
    cap = capture_for(150, 100, Rect(60, 40, 30, 20), settings)
    plan = cap.plan
    assert plan.scaled and plan.box.x > 0 and plan.box.y > 0
    canvas = bytearray(150 * 100 * 4)
    for y in range(plan.box.h):  # the canvas holds the captured image over the box
        row = cap.image[y * plan.box.w * 4 : (y + 1) * plan.box.w * 4]
        start = ((plan.box.y + y) * 150 + plan.box.x) * 4
        canvas[start : start + len(row)] = row
    same = generation.build_request(with_control(cap, bytes(canvas), 150), settings).payload
    assert the_unit(same)["image"] == same["init_images"][0]

    sketch = sketch_layer(150, 100)
    unit = the_unit(generation.build_request(with_control(cap, sketch, 150), settings).payload)
    got = Image.open(io.BytesIO(base64.b64decode(unit["image"]))).convert("RGB")
    flat = Image.new("RGB", (150, 100), "white")  # the oracle: PIL flattens over white, crops, resizes
    b, g, r, a = Image.frombytes("RGBA", (150, 100), sketch).split()
    flat.paste(Image.merge("RGB", (r, g, b)), mask=a)
    box = plan.box
    want = flat.crop((box.x, box.y, box.right, box.bottom)).resize((plan.work_w, plan.work_h), Image.BILINEAR)
    assert got.size == want.size
    assert max(abs(p - q) for p, q in zip(got.tobytes(), want.tobytes(), strict=True)) <= 3
    column = [min(got.getpixel((x, plan.work_h // 2))) for x in range(plan.work_w)]
    dark = [x for x, v in enumerate(column) if v < 128]
    centre = (72 - box.x) * plan.work_w / box.w  # the stroke's centre (x 70..73) in the map's pixels
    assert dark and abs(sum(dark) / len(dark) + 0.5 - centre) <= 1.0, (dark, centre)
    assert got.getpixel((0, 0)) == (255, 255, 255)  # transparent = white paper


def test_generate_and_refine_of_the_canvas_carry_the_control_over_the_canvas() -> None:
    settings = control_settings(control_module="scribble")
    plan = regions.plan_canvas(150, 100, target=64)
    sketch = sketch_layer(150, 100)
    txt = generation.build_request(generation.Capture(plan, None, None, sketch), settings)
    assert txt.kind == "txt2img" and the_unit(txt.payload)["module"] == "scribble"
    image = Image.open(io.BytesIO(base64.b64decode(the_unit(txt.payload)["image"])))
    assert image.size == (plan.work_w, plan.work_h)
    canvas = bytes(v for y in range(100) for x in range(150) for v in (x, y, 90, 255))
    img2img = generation.build_request(generation.Capture(plan, canvas, None, sketch), settings, 0.5)
    assert img2img.kind == "img2img" and the_unit(img2img.payload)["image"] == the_unit(txt.payload)["image"]


def test_the_servers_controlnet_list_is_read_by_name() -> None:
    from sd_krita import control

    assert control.model_names({"model_list": ["tiny [1a2b3c4d]", "None", "", 3]}) == ["tiny [1a2b3c4d]"]
    assert control.model_names({"detail": "Not Found"}) == [] == control.model_names(None)
    assert set(control.MODULES) == set(control.MODULE_LABELS)
    from sd_core.controlnet import preprocess  # the server's preprocessors: every module offered is one of them

    assert set(control.MODULES) <= set(preprocess.MODULES)
