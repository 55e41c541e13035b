"""sd_core.images: conversions, sizes, mask geometry, paste-back, colour match and outpainting canvas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sd_core import color, images, masks


def rng_image(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- to_rgb_array -----------------------------------------------------------------------------------------------


def test_rgba_pil_drops_alpha_and_keeps_colour():
    arr = rng_image()
    rgba = np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)])
    out = images.to_rgb_array(Image.fromarray(rgba, "RGBA"))
    assert out.dtype == np.uint8 and out.shape == (16, 24, 3)
    np.testing.assert_array_equal(out, arr)


def test_l_pil_is_replicated_to_three_channels():
    grey = rng_image()[:, :, 0]
    out = images.to_rgb_array(Image.fromarray(grey, "L"))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_palette_pil_is_converted_through_its_palette():
    pil = Image.fromarray(rng_image(), "RGB").quantize(colors=16)
    np.testing.assert_array_equal(images.to_rgb_array(pil), np.asarray(pil.convert("RGB")))


def test_cmyk_pil_is_converted():
    pil = Image.fromarray(rng_image(), "RGB").convert("CMYK")
    np.testing.assert_array_equal(images.to_rgb_array(pil), np.asarray(pil.convert("RGB")))


def test_float_array_is_scaled_and_rounded():
    arr = np.array([[[0.0, 0.5, 1.0], [0.2, 0.999, 0.001]]], dtype=np.float64)
    np.testing.assert_array_equal(images.to_rgb_array(arr), [[[0, 128, 255], [51, 255, 0]]])


def test_two_dimensional_array_is_grey():
    grey = rng_image()[:, :, 1]
    np.testing.assert_array_equal(images.to_rgb_array(grey)[:, :, 2], grey)


def test_rgba_array_drops_alpha():
    arr = rng_image()
    rgba = np.dstack([arr, np.full(arr.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(images.to_rgb_array(rgba), arr)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((2, 4, 4, 3), np.uint8), "dimensions"),
        (np.zeros((4, 4, 2), np.uint8), "channels"),
        (np.zeros((4, 4, 3), np.int32), "dtype"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.full((4, 4, 3), -1.0, np.float32), "[0, 1]"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        ([[1, 2], [3, 4]], "list"),
    ],
)
def test_bad_image_raises_value_error_naming_the_argument(bad, words):
    with pytest.raises(ValueError) as err:
        images.to_rgb_array(bad, "init_image")
    assert "init_image" in str(err.value) and words in str(err.value)


# --- masks ------------------------------------------------------------------------------------------------------


def test_l_mask_is_divided_by_255():
    m = np.array([[0, 128, 255]], np.uint8)
    out = images.to_mask_array(Image.fromarray(m, "L"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, m.astype(np.float32) / 255.0)


def test_mode_1_mask_is_zero_or_one():
    pil = Image.fromarray(np.array([[0, 255, 0]], np.uint8), "L").convert("1")
    np.testing.assert_array_equal(images.to_mask_array(pil), [[0.0, 1.0, 0.0]])


def test_rgb_mask_uses_pil_luminance():
    arr = rng_image()
    expected = np.asarray(Image.fromarray(arr).convert("L"), np.float32) / 255.0
    np.testing.assert_array_equal(images.to_mask_array(Image.fromarray(arr)), expected)
    np.testing.assert_array_equal(images.to_mask_array(arr), expected)


def test_rgba_mask_ignores_alpha():
    arr = rng_image()
    rgba = np.dstack([arr, np.zeros(arr.shape[:2], np.uint8)])
    np.testing.assert_array_equal(
        images.to_mask_array(Image.fromarray(rgba, "RGBA")), images.to_mask_array(Image.fromarray(arr))
    )


def test_bool_and_float_masks():
    b = np.array([[True, False]])
    np.testing.assert_array_equal(images.to_mask_array(b), [[1.0, 0.0]])
    f = np.array([[0.25, 0.75]], np.float64)
    out = images.to_mask_array(f)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.25, 0.75]])


def test_alpha_to_mask_marks_transparent_pixels_for_repaint():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[:, :, 3] = [[0, 255, 51], [255, 255, 0]]
    out = images.alpha_to_mask(Image.fromarray(rgba, "RGBA"))
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.8], [0.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(images.alpha_to_mask(rgba), out)


def test_alpha_to_mask_without_alpha_raises():
    with pytest.raises(ValueError, match="alpha"):
        images.alpha_to_mask(Image.fromarray(rng_image()))


def test_size_mismatch_names_both_sizes():
    with pytest.raises(ValueError) as err:
        masks.composite(rng_image(16, 24), rng_image(16, 24), np.zeros((8, 24), np.float32))
    assert "24x16" in str(err.value) and "24x8" in str(err.value)


# --- tensors ----------------------------------------------------------------------------------------------------


def test_image_to_tensor_matches_diffusers_preprocess():
    from diffusers.image_processor import VaeImageProcessor

    pil = Image.fromarray(rng_image(16, 24))
    expected = VaeImageProcessor(vae_scale_factor=8).preprocess(pil, height=16, width=24)
    out = images.image_to_tensor(pil)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 16, 24)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensor_to_images_matches_diffusers_postprocess_bytes(dtype):
    from diffusers.image_processor import VaeImageProcessor

    g = torch.Generator().manual_seed(0)
    t = (torch.randn(2, 3, 32, 40, generator=g) * 0.8).to(dtype)
    t[0, 0, 0, :5] = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5], dtype=dtype)  # clamping at both ends
    expected = VaeImageProcessor().postprocess(t, output_type="pil", do_denormalize=[True, True])
    out = images.tensor_to_images(t)
    assert len(out) == 2
    for a, b in zip(out, expected, strict=True):
        assert a.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensor_to_arrays_rejects_nan():
    t = torch.zeros(1, 3, 8, 8)
    t[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        images.tensor_to_arrays(t)


# --- sizes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("w, h", [(64, 64), (512, 768), (8192, 64), (8, 8), (40, 24)])
def test_check_size_accepts_multiples_of_8_in_range(w, h):
    images.check_size(w, h)


@pytest.mark.parametrize("w, h, words", [(500, 512, "multiple of 8"), (0, 512, "from 8 to"), (512, 8200, "8192"),
                                         (512.0, 512, "integer"), (True, 512, "integer")])  # fmt: skip
def test_check_size_rejects_with_a_clear_message(w, h, words):
    with pytest.raises(ValueError, match=words):
        images.check_size(w, h)


def test_round_to_multiple_modes():
    assert images.round_to_multiple(500) == 504
    assert images.round_to_multiple(499) == 496
    assert images.round_to_multiple(499, mode="up") == 504
    assert images.round_to_multiple(511, mode="down") == 504
    assert images.round_to_multiple(3) == 8


# --- blur and grow ----------------------------------------------------------------------------------------------


def test_blur_mask_softens_edges_and_stays_zero_far_away():
    m = np.zeros((64, 64), np.float32)
    m[24:40, 24:40] = 1
    out = masks.blur_mask(m, 4)
    assert 0.3 < out[32, 24] < 0.7  # at the edge: about half
    assert out[32, 32] > 0.9  # 8 px = 2 sigma from each edge: (Phi(2) - Phi(-2)) ** 2 = 0.91
    assert out[32, 24 - 13] == 0.0 and out[0, 0] == 0.0  # beyond 3 sigma
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-6)  # symmetric


def test_blur_mask_keeps_a_mask_at_the_border_on():
    m = np.zeros((32, 32), np.float32)
    m[:, :8] = 1
    row = masks.blur_mask(m, 4)[16]
    assert row[0] == row.max() and row[0] > 0.95  # zero padding would put the peak inside the band


def test_blur_mask_radius_zero_is_identity():
    m = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    np.testing.assert_array_equal(masks.blur_mask(m, 0), m)


def test_grow_mask_dilates_by_the_given_pixels():
    m = np.zeros((41, 41), np.float32)
    m[20, 20] = 1
    out = masks.grow_mask(m, 6)
    rows = np.flatnonzero(out[:, 20])
    assert rows[0] == 14 and rows[-1] == 26
    assert out[14, 14] == 0.0  # octagon, not a square
    assert out[16, 16] == 1.0


def test_grow_mask_negative_erodes():
    m = np.zeros((32, 32), np.float32)
    m[8:24, 8:24] = 1
    out = masks.grow_mask(m, -3)
    assert out[11:21, 11:21].min() == 1.0 and out[10, 16] == 0.0 and out.sum() == 100


def test_grow_mask_keeps_soft_values():
    m = np.zeros((9, 9), np.float32)
    m[4, 4] = 0.5
    out = masks.grow_mask(m, 1)
    assert out.max() == 0.5 and (out == 0.5).sum() == 9


# --- mask_bbox --------------------------------------------------------------------------------------------------


def test_mask_bbox_centred_square_box_with_padding():
    m = np.zeros((256, 256), np.float32)
    m[100:110, 120:140] = 1
    x0, y0, x1, y1 = masks.mask_bbox(m, 8, 512, 512)
    assert (x1 - x0) == (y1 - y0) and (x1 - x0) % 8 == 0
    assert x0 <= 112 and x1 >= 148 and y0 <= 92 and y1 >= 118
    assert (x1 - x0) == 40  # 36 wide after padding -> 40


def test_mask_bbox_at_canvas_edge_stays_inside_image():
    m = np.zeros((100, 200), np.float32)
    m[90:100, 195:200] = 1
    x0, y0, x1, y1 = masks.mask_bbox(m, 16, 512, 512)
    assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 100
    assert x1 == 200 and y1 == 100
    assert (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0
    assert x0 <= 195 - 16 and y0 <= 90 - 16


def test_mask_bbox_matches_the_working_aspect_ratio():
    m = np.zeros((300, 300), np.float32)
    m[140:160, 145:155] = 1
    x0, y0, x1, y1 = masks.mask_bbox(m, 4, 768, 512)
    assert (x1 - x0) * 512 == (y1 - y0) * 768
    assert (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0


def test_mask_bbox_too_big_for_aspect_takes_whole_side():
    m = np.zeros((64, 200), np.float32)
    m[10:50, 20:180] = 1
    x0, y0, x1, y1 = masks.mask_bbox(m, 32, 512, 512)
    assert (x0, x1, y0, y1) == (0, 200, 0, 64)


def test_mask_bbox_empty_mask_raises():
    with pytest.raises(ValueError, match="mask is empty"):
        masks.mask_bbox(np.zeros((64, 64), np.float32), 8, 512, 512)


# --- latent masks -----------------------------------------------------------------------------------------------


def test_latent_mask_area_averages_8x8_blocks():
    m = np.zeros((16, 24), np.float32)
    m[0:8, 0:8] = 1
    m[8:16, 8:12] = 1
    out = masks.latent_mask(m, 2, 3)
    assert out.shape == (1, 1, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.0]]))


def test_latent_mask_nearest_and_bilinear_shapes_and_range():
    m = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    for mode in ("nearest", "bilinear"):
        out = masks.latent_mask(m, 4, 6, mode=mode)
        assert out.shape == (1, 1, 4, 6) and 0.0 <= out.min() and out.max() <= 1.0


def test_diffusers_inpaint_condition_matches_diffusers_processors():
    from diffusers.image_processor import VaeImageProcessor

    h, w = 32, 48
    pil_image = Image.fromarray(rng_image(h, w))
    grey = np.random.default_rng(1).integers(0, 256, size=(h, w), dtype=np.uint8)
    grey[0, :4] = [127, 128, 0, 255]  # around the 0.5 threshold
    pil_mask = Image.fromarray(grey, "L")
    # the same calls StableDiffusionInpaintPipeline makes (diffusers 0.42): its two processors, then the pipeline's ops
    init = VaeImageProcessor(vae_scale_factor=8).preprocess(pil_image, height=h, width=w).float()
    mask_proc = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    condition = mask_proc.preprocess(pil_mask, height=h, width=w)
    expected_masked = init * (condition < 0.5)
    expected_mask = F.interpolate(condition, size=(h // 8, w // 8))

    mask_lat, masked = masks.diffusers_inpaint_condition(pil_image, pil_mask)
    assert torch.equal(masked, expected_masked)
    assert torch.equal(mask_lat, expected_mask)


# --- composite and colour ---------------------------------------------------------------------------------------


def test_composite_keeps_original_bytes_where_mask_is_zero():
    orig, gen = rng_image(seed=1), rng_image(seed=2)
    square = np.zeros((16, 24), np.float32)
    square[4:8, 12:16] = 1
    m = masks.blur_mask(square, 1.5)
    out = masks.composite(orig, gen, m)
    zero = m == 0
    assert zero.sum() > 150 and ((m > 0) & (m < 1)).sum() > 50
    np.testing.assert_array_equal(out[zero], orig[zero])


def test_composite_takes_generated_bytes_where_mask_is_one():
    orig, gen = rng_image(seed=1), rng_image(seed=2)
    m = np.ones((16, 24), np.float32)
    np.testing.assert_array_equal(masks.composite(orig, gen, m), gen)


def test_composite_soft_mask_blends_with_rounding():
    orig = np.full((1, 3, 3), 100, np.uint8)
    gen = np.full((1, 3, 3), 201, np.uint8)
    m = np.array([[0.25, 0.5, 0.9]], np.float32)
    out = masks.composite(orig, gen, m)
    np.testing.assert_array_equal(out[0, :, 0], [125, 150, 191])  # 125.25, 150.5 (half to even), 190.9


def test_lab_round_trip():
    arr = rng_image(32, 32)
    np.testing.assert_array_equal(np.round(color.lab_to_rgb(color.rgb_to_lab(arr))).astype(np.uint8), arr)


def test_color_match_moves_region_mean_toward_surroundings():
    rng = np.random.default_rng(0)
    orig = np.clip(rng.normal([150, 90, 60], 10, size=(48, 48, 3)), 0, 255).astype(np.uint8)
    gen = orig.copy()
    m = np.zeros((48, 48), np.float32)
    m[16:32, 16:32] = 1
    gen[16:32, 16:32] = np.clip(rng.normal([90, 140, 180], 25, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    out = color.color_match(gen, orig, m)
    inside = m > 0
    target = orig[~inside].mean(0)
    before = np.abs(gen[inside].mean(0) - target).sum()
    after = np.abs(out[inside].astype(float).mean(0) - target).sum()
    assert after < 0.1 * before


def test_color_match_leaves_unmasked_pixels_alone():
    orig, gen = rng_image(32, 32, 1), rng_image(32, 32, 2)
    m = np.zeros((32, 32), np.float32)
    m[8:20, 8:20] = masks.blur_mask(np.ones((12, 12), np.float32), 2)
    out = color.color_match(gen, orig, m)
    np.testing.assert_array_equal(out[m == 0], gen[m == 0])


# --- extend_canvas ----------------------------------------------------------------------------------------------


def test_extend_canvas_rounds_margins_up_to_multiples_of_8():
    img = rng_image(20, 30)
    canvas, mask = masks.extend_canvas(img, left=10, top=0, right=0, bottom=5)
    assert canvas.shape == (32, 40, 3) and mask.shape == (32, 40)
    np.testing.assert_array_equal(canvas[0:20, 10:40], img)  # 30 + 10 = 40 already; 20 + 5 -> 32 at the bottom


def test_extend_canvas_extra_goes_to_the_requested_side():
    canvas, _ = masks.extend_canvas(rng_image(16, 30), left=5)
    assert canvas.shape == (16, 40, 3)
    np.testing.assert_array_equal(canvas[:, 10:], rng_image(16, 30))


def test_extend_canvas_mask_covers_new_area_and_overlap():
    canvas, mask = masks.extend_canvas(rng_image(16, 16), right=16, overlap=4)
    assert mask.dtype == np.float32
    assert mask[:, 16:].min() == 1.0
    assert mask[:, 12:16].min() == 1.0
    assert mask[:, :12].max() == 0.0


@pytest.mark.parametrize("fill", ["edge_noise", "mirror"])
def test_extend_canvas_prefill_is_not_flat(fill):
    img = rng_image(32, 32)
    canvas, _ = masks.extend_canvas(img, right=64, fill=fill)
    new = canvas[:, 48:].astype(np.float32)
    assert new.std(axis=(0, 1)).min() > 5.0
    np.testing.assert_array_equal(canvas[:, :32], img)


def test_extend_canvas_rejects_negative_margins():
    with pytest.raises(ValueError, match="left"):
        masks.extend_canvas(rng_image(), left=-8)
