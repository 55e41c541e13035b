"""The evaluation's detectors, validated on the training generator with known answers: each pattern's check finds its
pattern (every pattern, many colour pairs, both scales, any phase, also blurred as a small model draws them) and fails
flat images, faint textures and the other patterns; the colour and role checks find the drawn colours in their roles.
Also: the training sampler never draws a held-out pair, and the seam measure tells tiling from non-tiling images.
(The same detectors against images labelled by eye: `test_labelled_set.py`.)"""

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


def known_answers() -> list[tuple[str | None, np.ndarray, data.TextureSpec | None]]:
    """(pattern or None, image, spec): every pattern 40 times (random colour pairs, both scales, any phase or the
    training's 4-pixel phases, a quarter blurred by 1 px), then 40 flat images with pixel noise and 40 faint
    textures (12% of a pair's contrast) that a person would call flat."""
    rng = np.random.default_rng(1234)
    out = []
    for pattern in data.PATTERNS:
        for i in range(40):
            fg, bg = rng.choice(COLOURS, size=2, replace=False)
            spec = data.TextureSpec(pattern, str(fg), str(bg), list(data.SCALES)[i % 2])
            img = data.render(spec, 64, rng, grid=None if i % 3 else data.GRID)
            if i % 4 == 3:
                img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.0)))
            out.append((pattern, img, spec))
    for i in range(80):
        fg, bg = rng.choice(COLOURS, size=2, replace=False)
        img = data.render(data.TextureSpec(data.PATTERNS[i % 8], str(fg), str(bg), "small"), 64, rng).astype(float)
        mean = img.mean(axis=(0, 1))
        img = mean + (0.12 if i % 2 else 0.0) * (img - mean) + rng.normal(0, 2, img.shape)
        out.append((None, np.clip(img, 0, 255).astype(np.uint8), None))
    return out


KNOWN = known_answers()


@pytest.mark.parametrize("pattern", data.PATTERNS)
def test_each_pattern_check_finds_its_pattern_and_fails_the_rest(pattern):
    """Measured: every check finds 38-40 of its 40 and passes at most 1 of the 360 others (flat and faint included)."""
    found = [detectors.is_pattern(img, pattern) for p, img, _ in KNOWN if p == pattern]
    false = [p for p, img, _ in KNOWN if p != pattern and detectors.is_pattern(img, pattern)]
    assert np.mean(found) >= 0.92, np.mean(found)
    assert len(false) <= 3, false


def test_detect_pattern_names_the_drawn_pattern_or_none():
    right = [detectors.detect_pattern(img) == p for p, img, _ in KNOWN]
    assert np.mean(right) >= 0.97  # measured 0.99
    assert detectors.detect_pattern(np.full((64, 64, 3), 128, np.uint8)) is None


def test_roles_name_the_figure_and_the_background():
    """dots, grid lines and bricks are the figure (the generator's mask), the surround, squares and mortar the
    background; asking the other way round fails."""
    right, swapped = [], []
    for p, img, spec in KNOWN:
        if p in detectors.ROLE_PATTERNS:
            verdict = detectors.judge(img, p, spec.fg, spec.bg, roles_asked=True)
            right.append(verdict["roles_ok"] and verdict["colours_ok"])
            swapped.append(detectors.judge(img, p, spec.bg, spec.fg, roles_asked=True)["roles_ok"])
    assert np.mean(right) >= 0.9 and np.mean(swapped) <= 0.05, (np.mean(right), np.mean(swapped))


def test_judge_passes_the_asked_texture_and_fails_wrong_asks():
    """ok for the drawn texture as asked; a wrong pattern, a wrong colour or flat images fail."""
    rng = np.random.default_rng(8)
    right, wrong_pattern, wrong_colour, flat = [], [], [], []
    for p, img, spec in KNOWN:
        if p is None:
            flat.append(detectors.judge(img, data.PATTERNS[len(flat) % 8], "red", "white")["ok"])
            continue
        right.append(detectors.judge(img, p, spec.fg, spec.bg, roles_asked=True)["ok"])
        other = data.PATTERNS[(data.PATTERNS.index(p) + 1 + len(right) % 7) % 8]
        wrong_pattern.append(detectors.judge(img, other, spec.fg, spec.bg)["ok"])
        third = str(rng.choice([c for c in COLOURS if c not in (spec.fg, spec.bg)]))
        wrong_colour.append(detectors.judge(img, p, spec.fg, third)["colours_ok"])
    assert np.mean(right) >= 0.9, np.mean(right)
    assert np.mean(wrong_pattern) <= 0.02 and np.mean(wrong_colour) <= 0.03 and not any(flat)


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
        assert detectors.detect_pattern(img.astype(np.uint8)) is None


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


def test_judged_tables_per_pattern_and_checks_roles_where_asked():
    """`evaluate.judged` (the scoring half of `judge_prompts`) on generator textures drawn as asked, and once with
    the colours swapped: right in the asked roles, wrong in swapped ones only where the prompt fixed the roles."""
    from sd_core.training.phrasing import Prompt

    rng = np.random.default_rng(4)
    prompts, images = [], []
    for pattern in data.PATTERNS:
        spec = data.TextureSpec(pattern, "red", "white", "small")
        roles = pattern in detectors.ROLE_PATTERNS
        prompts.append(Prompt(f"red {pattern} on a white background", pattern, "red", "white", roles))
        images.append(data.render(spec, 64, rng))
        swapped = data.render(data.TextureSpec(pattern, "white", "red", "small"), 64, rng)
        prompts.append(Prompt(f"red {pattern} on a white background", pattern, "red", "white", roles))
        images.append(swapped)
    result = evaluate.judged(prompts, list(range(len(prompts))), images, 3.0)
    assert result["n"] == 16 and set(result["per_pattern"]) == set(data.PATTERNS)
    for s in result["samples"]:
        as_asked = s["seed"] % 2 == 0
        assert s["pattern_ok"] and s["colours_ok"], s
        assert s["roles_ok"] == (as_asked or s["pattern"] not in detectors.ROLE_PATTERNS), s
    assert result["ok"] == (8 + 5) / 16
    table = evaluate.markdown_table(result)
    assert "| dots | 2 | 1.00 | 1.00 | 0.50 of 2 | 0.50 |" in table and "| **all** | 16 |" in table
    assert "| waves | 2 | 1.00 | 1.00 | - (none asked) | 1.00 |" in table
