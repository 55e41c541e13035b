"""Prompts in the phrasings people type, for training captions and for the held-out evaluation.

A texture (`data.TextureSpec`: pattern, fg, bg) can be asked for in many ways: "red and white dots", "red dots on a
white background", "a red and white polka dot pattern", "seamless red spots on white", "red dots" (one colour named),
"white background with red dots". `training_caption` draws one of the TRAINING templates at random;
`held_out_prompts` builds prompts from a disjoint set of HELD-OUT templates (never a training caption), so the
evaluation measures phrasings the model never saw.

Role convention (what `Prompt.figure` and `Prompt.background` mean, and what the training data shows):

- figure = `data.pattern_mask`'s foreground (`TextureSpec.fg`): the dots, the grid lines, the bricks (the mortar is
  the background), the first stripe/check/wave/noise colour; background = `TextureSpec.bg`.
- "X on Y", "X on a Y background", "Y background with X", "X bricks with Y mortar", "X in ... on Y": X is the figure,
  Y the background; these fix the roles (`Prompt.roles` True for patterns with a figure: dots, grid, bricks).
- "X and Y <pattern>", "<pattern> in X and Y", "a X and Y ... pattern": X is the figure, as the training captions
  always had it ("red and white dots" = red dots on white), but a prompt of this kind only asks for both colours
  (`roles` False): people write "white and red dots" for the same thing.
- Symmetric patterns (stripes, checkerboard, waves, noise): the first named colour is the figure, roles never matter
  (`roles` False).
- One colour named: "red bricks", "a red dot pattern" name the figure (background None: any other colour); "dots on
  a blue background" names the background only (figure None).

Synonyms: dots / polka dots / spots / dotted, grid / grid lines / square grid, checkerboard / checkered / checks /
checker, bricks / brick wall / brickwork, waves / wavy stripes / wavy lines, vertical or horizontal stripes / lines,
"stripes" alone (training only: either direction). Colours are `data.COLOURS`' eight names; grey/gray is not one of
them (the model draws no grey, and the detectors name no grey), so no prompt here says grey.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import data


@dataclass(frozen=True)
class Prompt:
    text: str  # e.g. "orange dots on a blue background"
    pattern: str  # a name from data.PATTERNS
    figure: str | None  # fg colour (dots, grid lines, bricks) or, for symmetric patterns, the first named colour
    background: str | None  # the background / mortar / second colour; None if not named
    roles: bool  # True when the phrasing fixes which colour is which (only for patterns with a figure)


FIGURE_PATTERNS = ("dots", "grid", "bricks")
"""Patterns whose two colours play different parts (figure on a background); the others are symmetric."""

NOUNS: dict[str, tuple[str, ...]] = {
    "vertical stripes": ("vertical stripes", "vertical lines"),
    "horizontal stripes": ("horizontal stripes", "horizontal lines"),
    "checkerboard": ("checkerboard", "checks", "checkered squares"),
    "dots": ("dots", "polka dots", "spots"),
    "bricks": ("bricks", "brick wall", "brickwork"),
    "grid": ("grid", "grid lines", "square grid"),
    "waves": ("waves", "wavy stripes", "wavy lines"),
    "noise": ("noise", "blotches", "mottled noise"),
}
"""How a pattern is named as a noun phrase ("red and white <noun>", "<noun> on blue")."""

ADJECTIVES: dict[str, tuple[str, ...]] = {
    "vertical stripes": ("vertical stripe", "vertically striped", "vertical line"),
    "horizontal stripes": ("horizontal stripe", "horizontally striped", "horizontal line"),
    "checkerboard": ("checkerboard", "checkered", "checker"),
    "dots": ("dot", "polka dot", "spotted", "dotted"),
    "bricks": ("brick",),
    "grid": ("grid", "grid line"),
    "waves": ("wave", "wavy"),
    "noise": ("noise", "mottled"),
}
"""How a pattern is named before "pattern" or "texture" ("a red and white <adjective> pattern")."""

TRAINING_ONLY_NOUNS = {"vertical stripes": ("stripes",), "horizontal stripes": ("stripes",)}
"""Ambiguous names a person may type ("red and white stripes"): trained as either direction, never evaluated."""

# Templates: {fg} {bg} colours, {n} noun, {adj} adjective, {s} optional size word ("small " / "large " / "").
# {a_fg} / {a_bg} / {a_adj} put "a" or "an" before the next word.
TRAIN_ROLES = (
    "{s}{fg} {n} on {bg}",
    "{s}{fg} {n} on {a_bg} background",
    "{bg} background with {fg} {n}",
    "{n} in {fg} on {bg}",
    "seamless {fg} {n} on {bg}",
    "tileable {fg} {n} on {a_bg} background",
    "{fg} {n} on {bg}, seamless texture",
)
TRAIN_ORDER = (
    "{s}{fg} and {bg} {n}",
    "{s}{fg} and {bg} {n}",
    "{fg} and {bg} {adj} pattern",
    "{a_fg} and {bg} {adj} pattern",
    "{n} in {fg} and {bg}",
    "seamless {fg} and {bg} {n} texture",
    "tileable {fg} and {bg} {n}",
    "{fg} {bg} {n}",
    "a pattern of {fg} and {bg} {n}",
    "{fg} and {bg} {n}, seamless",
)
TRAIN_FIGURE_ONLY = (
    "{s}{fg} {n}",
    "{s}{fg} {n}",
    "{a_fg} {adj} pattern",
    "seamless {fg} {n} texture",
    "{n} in {fg}",
    "tileable {fg} {n}",
)
TRAIN_BACKGROUND_ONLY = ("{n} on {a_bg} background", "{n} on {bg}")
TRAIN_NO_COLOUR = ("{s}{n}", "{a_adj} pattern", "seamless {n} texture", "tileable {n}", "{adj} texture")
TRAIN_COLOURS_ONLY = ("{fg} and {bg}", "{fg} and {bg} pattern", "seamless {fg} and {bg} texture")
TRAIN_BRICKS_ROLES = ("{fg} {n} with {bg} mortar", "{bg} mortar and {fg} bricks")

HELD_OUT_ROLES = (
    "seamless {fg} {n} on {a_bg} background",
    "{a_bg} background with {fg} {n}",
    "{n} in {fg} on {a_bg} background",
    "tileable texture of {fg} {n} on {bg}",
)
HELD_OUT_ORDER = (
    "a seamless {fg} and {bg} {adj} pattern",
    "{fg} and {bg} {n} texture, tileable",
    "{a_fg} and {bg} {adj} texture",
    "tileable pattern of {fg} and {bg} {n}",
)
HELD_OUT_FIGURE_ONLY = ("a seamless {fg} {adj} texture", "{fg} {n}, tileable", "a pattern of {fg} {n}")
HELD_OUT_BRICKS_ROLES = ("seamless {fg} {n} with {bg} mortar", "{a_fg} brick texture with {bg} mortar")

TRAINING_KINDS = (
    ("roles", 0.3),
    ("order", 0.33),
    ("figure", 0.15),
    ("background", 0.03),
    ("none", 0.1),
    ("colours", 0.09),
)
"""Which kind of caption `training_caption` draws, and how often."""


def article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def fill(template: str, pattern: str, fg: str | None, bg: str | None, noun: str, adj: str, size: str = "") -> str:
    values = {"s": size, "n": noun, "adj": adj, "a_adj": article(adj), "fg": fg or "", "bg": bg or ""}
    if fg:
        values["a_fg"] = article(fg)
    if bg:
        values["a_bg"] = article(bg)
    return template.format(**values)


def pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def training_caption(spec: data.TextureSpec, rng: np.random.Generator) -> str:
    """A random training phrasing of a texture (one of the TRAIN_* templates; never a held-out template)."""
    names, weights = zip(*TRAINING_KINDS, strict=True)
    kind = names[rng.choice(len(names), p=np.array(weights) / sum(weights))]
    noun = pick(rng, NOUNS[spec.pattern] + TRAINING_ONLY_NOUNS.get(spec.pattern, ()))
    adj = pick(rng, ADJECTIVES[spec.pattern])
    size = f"{spec.scale} " if rng.random() < 0.25 else ""
    if kind == "roles":
        templates = TRAIN_ROLES + (TRAIN_BRICKS_ROLES if spec.pattern == "bricks" else ())
        return fill(pick(rng, templates), spec.pattern, spec.fg, spec.bg, noun, adj, size)
    if kind == "order":
        return fill(pick(rng, TRAIN_ORDER), spec.pattern, spec.fg, spec.bg, noun, adj, size)
    if kind == "figure":
        return fill(pick(rng, TRAIN_FIGURE_ONLY), spec.pattern, spec.fg, None, noun, adj, size)
    if kind == "background":
        return fill(pick(rng, TRAIN_BACKGROUND_ONLY), spec.pattern, None, spec.bg, noun, adj, size)
    if kind == "none":
        return fill(pick(rng, TRAIN_NO_COLOUR), spec.pattern, None, None, noun, adj, size)
    return fill(pick(rng, TRAIN_COLOURS_ONLY), spec.pattern, spec.fg, spec.bg, noun, adj, size)


def _prompts(
    n: int,
    seed: int,
    roles_templates: tuple[str, ...],
    order_templates: tuple[str, ...],
    figure_templates: tuple[str, ...],
    bricks_templates: tuple[str, ...],
    held_out: bool,
) -> list[Prompt]:
    """`n` prompts taking turns over the eight patterns (equal shares); kinds take turns too: figure on a background,
    two colours in the order convention, one colour. `held_out`: each detectable pattern asks for one of its
    held-out colours (`data.HELD_OUT`, in either role) with a partner it was trained with; the other patterns have no
    held-out pairs and get trained pairs (their phrasings are still held out)."""
    rng = np.random.default_rng(seed)
    held = {p: [c for c, q in data.HELD_OUT if q == p] for p in data.PATTERNS}
    out: list[Prompt] = []
    for i in range(n):
        pattern = data.PATTERNS[i % len(data.PATTERNS)]
        ok = [c for c in data.COLOURS if data.allowed(c, pattern)]
        if held_out and held[pattern]:
            colour = held[pattern][(i // len(data.PATTERNS)) % len(held[pattern])]
            other = pick(rng, tuple(c for c in ok if c != colour))
            fg, bg = (colour, other) if rng.random() < 0.5 else (other, colour)
        else:
            a, b = rng.choice(len(ok), size=2, replace=False)
            fg, bg = ok[int(a)], ok[int(b)]
        noun, adj = pick(rng, NOUNS[pattern]), pick(rng, ADJECTIVES[pattern])
        kind = ("roles", "order", "figure", "roles", "order")[(i // len(data.PATTERNS)) % 5]
        if kind == "figure":
            if held_out and held[pattern] and fg not in held[pattern]:
                fg, bg = bg, fg  # one colour named: the held-out one
            text = fill(pick(rng, figure_templates), pattern, fg, None, noun, adj)
            out.append(Prompt(text, pattern, fg, None, False))
            continue
        if kind == "roles":
            templates = roles_templates + (bricks_templates if pattern == "bricks" else ())
        else:
            templates = order_templates
        text = fill(pick(rng, templates), pattern, fg, bg, noun, adj)
        out.append(Prompt(text, pattern, fg, bg, kind == "roles" and pattern in FIGURE_PATTERNS))
    return out


def held_out_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """`n` prompts in HELD-OUT phrasings: `data.HELD_OUT` colour/pattern pairs for the four patterns that have them,
    and trained pairs for bricks, grid, waves and noise (which have no held-out pairs; their phrasings are still
    never seen in training). Patterns take turns (equal shares)."""
    return _prompts(n, seed, HELD_OUT_ROLES, HELD_OUT_ORDER, HELD_OUT_FIGURE_ONLY, HELD_OUT_BRICKS_ROLES, True)


def trained_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """`n` prompts in TRAINING phrasings on trained colour/pattern pairs (patterns take turns)."""
    return _prompts(n, seed, TRAIN_ROLES, TRAIN_ORDER, TRAIN_FIGURE_ONLY, TRAIN_BRICKS_ROLES, False)


def all_training_texts(spec: data.TextureSpec) -> set[str]:
    """Every caption `training_caption` can give `spec` (tests: no held-out prompt is ever a training caption)."""
    out = set()
    nouns = NOUNS[spec.pattern] + TRAINING_ONLY_NOUNS.get(spec.pattern, ())
    groups = [
        (TRAIN_ROLES + TRAIN_BRICKS_ROLES + TRAIN_ORDER + TRAIN_COLOURS_ONLY, spec.fg, spec.bg),
        (TRAIN_FIGURE_ONLY, spec.fg, None),
        (TRAIN_BACKGROUND_ONLY, None, spec.bg),
        (TRAIN_NO_COLOUR, None, None),
    ]
    for templates, fg, bg in groups:
        for t in templates:
            for noun in nouns:
                for adj in ADJECTIVES[spec.pattern]:
                    for size in ("", f"{spec.scale} "):
                        out.add(fill(t, spec.pattern, fg, bg, noun, adj, size))
    return out
