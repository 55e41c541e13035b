"""The phrasings of `sd_core.training.phrasing`: training captions, held-out and trained evaluation prompts."""

from __future__ import annotations

import numpy as np
import pytest

from sd_core.training import data, phrasing


def test_held_out_prompts_are_never_training_captions():
    prompts = phrasing.held_out_prompts(160)
    for p in prompts:
        fg = p.figure or next(c for c in data.COLOURS if c != p.background)
        bg = p.background or next(c for c in data.COLOURS if c != fg)
        for scale in data.SCALES:
            seen = phrasing.all_training_texts(data.TextureSpec(p.pattern, fg, bg, scale))
            assert p.text not in seen, p


def test_training_captions_come_from_the_training_templates():
    rng = np.random.default_rng(0)
    for _ in range(300):
        spec = data.random_spec(rng)
        assert phrasing.training_caption(spec, rng) in phrasing.all_training_texts(spec)


def test_held_out_prompts_ask_for_held_out_pairs_and_every_pattern():
    prompts = phrasing.held_out_prompts(80)
    assert {p.pattern for p in prompts} == set(data.PATTERNS)
    for p in prompts:
        colours = {p.figure, p.background} - {None}
        assert colours and colours <= set(data.COLOURS) and p.figure != p.background
        assert all(c in p.text for c in colours)
        held = {c for c, q in data.HELD_OUT if q == p.pattern}
        if held:
            assert colours & held, p  # a held-out colour, with a partner the pattern was trained with
            assert all(data.allowed(c, p.pattern) for c in colours - held)
        else:
            assert all(data.allowed(c, p.pattern) for c in colours)
    assert phrasing.held_out_prompts(40, seed=3) == phrasing.held_out_prompts(40, seed=3)


def test_trained_prompts_use_trained_pairs():
    for p in phrasing.trained_prompts(80):
        assert all(data.allowed(c, p.pattern) for c in (p.figure, p.background) if c)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (data.TextureSpec("dots", "orange", "blue", "small"), "orange dots on a blue background"),
        (data.TextureSpec("grid", "white", "black", "small"), "white grid lines on black"),
        (data.TextureSpec("bricks", "red", "white", "small"), "red bricks with white mortar"),
        (data.TextureSpec("vertical stripes", "purple", "white", "small"), "purple and white stripes"),
        (data.TextureSpec("checkerboard", "black", "white", "small"), "a black and white checkerboard pattern"),
        (data.TextureSpec("bricks", "red", "white", "small"), "red bricks"),
        (data.TextureSpec("dots", "red", "white", "large"), "large red and white polka dots"),
    ],
)
def test_the_phrasings_people_use_are_trained(spec, text):
    assert text in phrasing.all_training_texts(spec)


def test_roles_only_for_phrasings_that_fix_them():
    for p in phrasing.held_out_prompts(200):
        if p.roles:
            assert p.pattern in phrasing.FIGURE_PATTERNS and p.background and p.figure
            fig, bg = p.text.index(p.figure), p.text.index(p.background)
            assert (fig < bg) != ("background with" in p.text)  # "a Y background with X dots": X is the figure
        if " and " in p.text:
            assert not p.roles


def test_caption_mix_takes_phrasings():
    mix = data.parse_caption_mix("phrasing=0.8,full=0.2")
    assert mix == (("phrasing", 0.8), ("full", 0.2))
    mix = (("phrasing", 1.0),)
    captions = data.TextureDataset(seed=0, caption_mix=mix, phrase=phrasing.training_caption).batch(16)[1]
    assert len(set(captions)) > 8
    with pytest.raises(ValueError, match="phrasing.training_caption"):  # data.py cannot import phrasing.py (cycle)
        data.TextureDataset(seed=0, caption_mix=mix).batch(1)
    with pytest.raises(ValueError, match="unknown caption variant"):
        data.parse_caption_mix("phrases=1")
