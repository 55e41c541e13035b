"""The evaluation's detectors, validated on the training generator: they find the colours and patterns the generator
drew (also blurred, as a small model draws them, and at any phase), and rarely see a pattern that is not there.
Also: the training sampler never draws a held-out pair, and the seam measure tells tiling from non-tiling images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sd_core.training import data, detectors, evaluate

COLOURS = list(data.COLOURS)


def draw(
    pattern: str, rng: np.random.Generator, blur: float = 0.0, size: int = 64
) -> tuple[np.ndarray, data.TextureSpec]:
    fg, bg = rng.choice(COLOURS, size=2, replace=False)
    spec = data.TextureSpec(pattern, str(fg), str(bg), str(rng.choice(list(data.SCALES))))
    img = data.render(spec, size, rng, grid=None)
    if blur:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(blur)))
    return img, spec


@pytest.mark.parametrize("blur", [0.0, 1.0])
@pytest.mark.parametrize("pattern", data.DETECTABLE)
def test_detects_the_drawn_pattern(pattern, blur):
    rng = np.random.default_rng(data.DETECTABLE.index(pattern) * 10 + int(blur * 10))
    hits = [detectors.detect_pattern(draw(pattern, rng, blur)[0]) == pattern for _ in range(30)]
    assert np.mean(hits) >= 0.95


@pytest.mark.parametrize("pattern", [p for p in data.PATTERNS if p not in data.DETECTABLE])
def test_other_patterns_are_rarely_taken_for_a_detectable_one(pattern):
    rng = np.random.default_rng(5)
    found = [detectors.detect_pattern(draw(pattern, rng, 1.0)[0]) for _ in range(30)]
    limit = 0.25 if pattern == "noise" else 0.05  # random blobs can look like dots or stripes now and then
    assert np.mean([f != "other" for f in found]) <= limit, found


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_diagonal_stripes_are_found(blur):
    rng = np.random.default_rng(21 + int(blur))
    assert np.mean([detectors.is_diagonal_stripes(draw("diagonal stripes", rng, blur)[0]) for _ in range(30)]) >= 0.95


@pytest.mark.parametrize("pattern", data.PATTERNS)
def test_the_trained_patterns_are_not_diagonal_stripes(pattern):
    rng = np.random.default_rng(22)
    found = [detectors.is_diagonal_stripes(draw(pattern, rng, 1.0)[0]) for _ in range(30)]
    assert np.mean(found) <= (0.1 if pattern == "noise" else 0.0), pattern


@pytest.mark.parametrize("blur", [0.0, 1.0])
def test_finds_the_drawn_colours_and_not_others(blur):
    rng = np.random.default_rng(11)
    right, wrong = [], []
    for i in range(60):
        img, spec = draw(data.DETECTABLE[i % 4], rng, blur)
        right.append(detectors.has_colours(img, (spec.fg, spec.bg)))
        third = [c for c in COLOURS if c not in (spec.fg, spec.bg)][i % 6]
        wrong.append(detectors.has_colours(img, (spec.fg, third)) or detectors.has_colours(img, (third, spec.bg)))
    assert np.mean(right) >= 0.95
    assert np.mean(wrong) <= 0.02


@pytest.mark.parametrize("name", COLOURS)
def test_each_palette_colour_is_named(name):
    solid = np.broadcast_to(np.array(data.COLOURS[name], np.uint8), (16, 16, 3))
    fr = detectors.colour_fractions(solid)
    assert fr[name] == 1.0 and sum(fr.values()) == 1.0


def test_diagonal_stripes_are_not_a_checkerboard():
    yy, xx = np.mgrid[0:64, 0:64]
    for period in (12, 16, 24):
        mask = ((xx + yy) % period) < period // 2
        img = np.where(mask[..., None], np.array(data.COLOURS["blue"]), np.array(data.COLOURS["yellow"]))
        assert detectors.detect_pattern(img.astype(np.uint8)) == "other"


def test_flat_image_has_no_pattern():
    assert detectors.detect_pattern(np.full((64, 64, 3), 128, np.uint8)) == "other"


def test_training_sampler_never_draws_a_held_out_pair():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        spec = data.random_spec(rng)
        assert data.allowed(spec.fg, spec.pattern) and data.allowed(spec.bg, spec.pattern)
        seen |= {(spec.fg, spec.pattern), (spec.bg, spec.pattern)}
    all_pairs = {(c, p) for c in COLOURS for p in data.PATTERNS}
    assert seen == all_pairs - set(data.HELD_OUT)  # everything else does occur


def test_evaluation_asks_exactly_for_held_out_pairs():
    samples = evaluate.held_out_samples(50)
    assert len(samples) == 50 and len({s.seed for s in samples}) == 50
    for s in samples:
        held = [c for c in s.colours if (c, s.pattern) in data.HELD_OUT]
        partner = [c for c in s.colours if (c, s.pattern) not in data.HELD_OUT]
        assert len(held) == 1 and len(partner) == 1
        assert s.prompt == f"{s.colours[0]} and {s.colours[1]} {s.pattern}"
    assert {(c, s.pattern) for s in samples for c in s.colours} & set(data.HELD_OUT) == set(data.HELD_OUT)


def test_validation_samples_share_no_image_with_the_reported_ones():
    """Choices are made on the validation samples; the reported figures use the defaults: no image in common."""
    validation = evaluate.validation_samples(100)
    reported = evaluate.held_out_samples(50) + evaluate.trained_samples(50)
    assert len(validation["held_out"]) == len(validation["trained"]) == 100
    chosen_on = {(s.prompt, s.seed) for kind in validation.values() for s in kind}
    assert not chosen_on & {(s.prompt, s.seed) for s in reported}
    assert not {s.seed for kind in validation.values() for s in kind} & {s.seed for s in reported}
    assert {(c, s.pattern) for s in validation["held_out"] for c in s.colours} >= set(data.HELD_OUT)


def test_generator_textures_tile_and_wrap_ratio_sees_it():
    """The generator's textures wrap: their seams look like interior steps (ratio about 1); the same textures cut
    out of a larger render do not wrap (ratio far above 1); a ramp's seam is a cliff."""
    rng = np.random.default_rng(3)
    wrapping = [draw(p, rng)[0] for p in data.PATTERNS for _ in range(4)]
    cut = [draw(p, rng, size=80)[0][5:69, 9:73] for p in data.PATTERNS for _ in range(4)]
    assert evaluate.wrap_ratio(wrapping) <= 1.5
    assert evaluate.wrap_ratio(cut) >= 3
    ramp = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, axis=0).repeat(3, axis=2)
    assert evaluate.wrap_ratio([ramp], "x") > 10 and evaluate.wrap_ratio([ramp], "y") < 1.5
