"""Training data: procedural tileable textures with captions, and a folder of captioned images for fine-tuning.

The texture generator is the built-in model's whole world: eight two-colour patterns in eight named colours at two
scales, drawn anti-aliased with periods that divide the image size (so every texture wraps seamlessly). Caption
variants ("red and white checkerboard", "checkerboard", "red checkerboard", "red and white") teach the text encoder
the words one by one, which is what lets the model combine a colour and a pattern it never saw together.

`HELD_OUT` lists the colour/pattern pairs the training sampler never draws; the evaluation asks for exactly those.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "purple": (135, 45, 185),
    "white": (245, 245, 240),
    "black": (20, 20, 25),
}
PATTERNS = ("vertical stripes", "horizontal stripes", "checkerboard", "dots", "bricks", "grid", "waves", "noise")
DETECTABLE = ("vertical stripes", "horizontal stripes", "checkerboard", "dots")
"""Patterns the evaluation's detector recognises (`sd_core.training.detectors.detect_pattern`)."""
SCALES = {"small": 0.25, "large": 0.5}
"""Pattern period as a fraction of the image side (64 px: 16 and 32 px)."""
GRID = 4
"""Training textures shift by multiples of 4 pixels: their edges fall on the autoencoder's 8-pixel cells or halfway,
which a 4-channel latent per 8x8 cell can represent far more easily than arbitrary sub-cell phases."""

HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "checkerboard"),
    ("blue", "checkerboard"),
    ("orange", "dots"),
    ("blue", "dots"),
    ("yellow", "vertical stripes"),
    ("purple", "vertical stripes"),
    ("green", "horizontal stripes"),
    ("red", "horizontal stripes"),
)
"""(colour, pattern) pairs never drawn in training, in either colour slot: each detectable pattern loses two colours."""


@dataclass(frozen=True)
class TextureSpec:
    """Everything that fixes one texture: the rest (phase, jitter) comes from the random generator."""

    pattern: str
    fg: str
    bg: str
    scale: str


def caption(spec: TextureSpec, variant: str = "full", with_scale: bool = False) -> str:
    """The caption of a texture. Variants: "full" ("red and white dots"), "pattern" ("dots"), "one" (first colour
    only: "red dots"), "colours" ("red and white")."""
    prefix = f"{spec.scale} " if with_scale else ""
    if variant == "full":
        return f"{prefix}{spec.fg} and {spec.bg} {spec.pattern}"
    if variant == "pattern":
        return f"{prefix}{spec.pattern}"
    if variant == "one":
        return f"{prefix}{spec.fg} {spec.pattern}"
    if variant == "colours":
        return f"{spec.fg} and {spec.bg}"
    raise ValueError(f"unknown caption variant {variant!r}")


def allowed(colour: str, pattern: str) -> bool:
    """Whether training may show `colour` together with `pattern`."""
    return (colour, pattern) not in HELD_OUT


# --- rendering ---------------------------------------------------------------------------------------------------


def _frac(v: np.ndarray) -> np.ndarray:
    return v - np.floor(v)


def _value_noise(u: np.ndarray, v: np.ndarray, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth periodic noise in [0, 1]: random values on a `cells` x `cells` wrapping lattice, smoothstep-blended."""
    lattice = rng.random((cells, cells))
    x, y = u * cells, v * cells
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    tx, ty = x - x0, y - y0
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    x0, y0, x1, y1 = x0 % cells, y0 % cells, (x0 + 1) % cells, (y0 + 1) % cells
    top = lattice[y0, x0] * (1 - tx) + lattice[y0, x1] * tx
    bottom = lattice[y1, x0] * (1 - tx) + lattice[y1, x1] * tx
    return top * (1 - ty) + bottom * ty


def pattern_mask(
    pattern: str, size: int, period: int, rng: np.random.Generator, supersample: int = 4, grid: int | None = None
) -> np.ndarray:
    """Foreground coverage in [0, 1], [size, size], anti-aliased by supersampling. `period` must divide `size` so
    the texture tiles; u, v below are coordinates in periods, shifted by a random phase (a multiple of `grid` pixels
    when given, so that edges fall on the autoencoder's 8-pixel cells)."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    xs, ys = np.meshgrid(coords, coords)

    def phase() -> float:
        if grid is None:
            return float(rng.random())
        return int(rng.integers(max(1, period // grid))) * grid / period

    u = xs / period + phase()
    v = ys / period + phase()
    if pattern == "vertical stripes":
        m = _frac(u) < 0.5
    elif pattern == "horizontal stripes":
        m = _frac(v) < 0.5
    elif pattern == "checkerboard":
        m = (np.floor(2 * u) + np.floor(2 * v)) % 2 == 0
    elif pattern == "dots":
        r = rng.uniform(0.22, 0.3)
        m = (_frac(u) - 0.5) ** 2 + (_frac(v) - 0.5) ** 2 < r * r
    elif pattern == "bricks":
        row = np.floor(2 * v)
        mortar = 0.07
        shifted = u + 0.5 * (row % 2)
        m = (_frac(2 * v) > 2 * mortar) & (_frac(shifted) > mortar)
    elif pattern == "grid":
        width = rng.uniform(0.1, 0.16)
        m = (_frac(u) < width) | (_frac(v) < width)
    elif pattern == "waves":
        # bands displaced by a sine along x; its wavelength (two periods, or the image side) divides the size
        wavelength = 2 * period if size % (2 * period) == 0 else size
        amp = rng.uniform(0.15, 0.3)
        m = _frac(v + amp * np.sin(2 * math.pi * xs / wavelength)) < 0.5
    elif pattern == "diagonal stripes":  # not in PATTERNS: the built-in model never saw it (the LoRA demonstration)
        m = _frac(u + v) < 0.5
    elif pattern == "noise":
        cells = max(2, size // period * 2)
        field = _value_noise(xs / size, ys / size, cells, rng)
        m = field > 0.5
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    m = m.astype(np.float32)
    return m.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def render(
    spec: TextureSpec,
    size: int = 64,
    rng: np.random.Generator | None = None,
    jitter: float = 12.0,
    grid: int | None = GRID,
) -> np.ndarray:
    """One texture as uint8 RGB [size, size, 3]. Colours get a small random jitter (`jitter` per channel); pattern
    phases are multiples of `grid` pixels (None: any phase)."""
    rng = rng if rng is not None else np.random.default_rng()
    period = max(4, round(size * SCALES[spec.scale]))
    if size % period:
        raise ValueError(f"image size {size} is not a multiple of the {spec.scale} period {period}")
    m = pattern_mask(spec.pattern, size, period, rng, grid=grid)[..., None]
    fg = np.clip(np.array(COLOURS[spec.fg], np.float32) + rng.normal(0, jitter, 3), 0, 255)
    bg = np.clip(np.array(COLOURS[spec.bg], np.float32) + rng.normal(0, jitter, 3), 0, 255)
    return np.clip(np.rint(m * fg + (1 - m) * bg), 0, 255).astype(np.uint8)


def random_spec(
    rng: np.random.Generator, held_out: bool = False, pattern_weights: dict[str, float] | None = None
) -> TextureSpec:
    """A random texture for training (`held_out=False`: never a held-out pair) or for evaluation of held-out pairs.
    `pattern_weights` (training only) draws some patterns more often than others (missing ones weigh 1)."""
    names = list(COLOURS)
    if held_out:
        colour, pattern = HELD_OUT[rng.integers(len(HELD_OUT))]
        partner = [c for c in names if c != colour and allowed(c, pattern)]
        other = partner[rng.integers(len(partner))]
        fg, bg = (colour, other) if rng.random() < 0.5 else (other, colour)
    else:
        if pattern_weights:
            weights = np.array([pattern_weights.get(p, 1.0) for p in PATTERNS])
            pattern = PATTERNS[rng.choice(len(PATTERNS), p=weights / weights.sum())]
        else:
            pattern = PATTERNS[rng.integers(len(PATTERNS))]
        ok = [c for c in names if allowed(c, pattern)]
        i, j = rng.choice(len(ok), size=2, replace=False)
        fg, bg = ok[i], ok[j]
    return TextureSpec(pattern, fg, bg, list(SCALES)[rng.integers(len(SCALES))])


CAPTION_VARIANTS = (("full", 0.7), ("pattern", 0.1), ("one", 0.1), ("colours", 0.1))
VARIANT_NAMES = ("full", "pattern", "one", "colours", "phrasing")
"""Caption variants a caption mix may weigh: `caption`'s four, and "phrasing" (`phrasing.training_caption`: the
phrasings people type, "red dots on a white background", "a seamless red and white polka dot pattern", ...)."""


def parse_weights(text: str, names: tuple[str, ...] | list[str], what: str) -> list[tuple[str, float]]:
    """ "a=0.4,b=2" -> [("a", 0.4), ("b", 2.0)] for options that weigh named choices ("" -> []); every name must be
    one of `names` (`what` names them in errors) and every weight a number >= 0."""
    pairs = []
    for part in text.split(",") if text else []:
        name, _, value = (v.strip() for v in part.partition("="))
        if name not in names:
            raise ValueError(f"unknown {what} {name!r} in {text!r}; use {list(names)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{what} weight {part!r} in {text!r} is not name=number") from None
        if not weight >= 0:
            raise ValueError(f"{what} weight {part!r} in {text!r} must be >= 0")
        pairs.append((name, weight))
    return pairs


def parse_caption_mix(text: str) -> tuple[tuple[str, float], ...]:
    """ "full=0.4,pattern=0.15,one=0.15,colours=0.3" or "phrasing=0.8,full=0.2" -> CAPTION_VARIANTS-like weights
    (names from `VARIANT_NAMES`; "" -> the default)."""
    return tuple(parse_weights(text, VARIANT_NAMES, "caption variant")) or CAPTION_VARIANTS


def parse_pattern_weights(text: str) -> dict[str, float]:
    """ "dots=3,checkerboard=1.5" -> {"dots": 3.0, "checkerboard": 1.5} ("" -> {}: every pattern equally often)."""
    weights = dict(parse_weights(text, PATTERNS, "pattern"))
    if weights and sum(weights.get(p, 1.0) for p in PATTERNS) <= 0:
        raise ValueError(f"pattern weights {text!r} leave no pattern to draw")
    return weights


Phrase = Callable[[TextureSpec, np.random.Generator], str]
"""A caption in people's words for a texture (`phrasing.training_caption`, passed in: phrasing imports this module)."""


def random_caption(
    spec: TextureSpec,
    rng: np.random.Generator,
    variants: tuple[tuple[str, float], ...] = CAPTION_VARIANTS,
    phrase: Phrase | None = None,
) -> str:
    """Mostly the full caption; sometimes only part of it, so each word also means something on its own. The
    "phrasing" variant is `phrase`'s caption."""
    names, weights = zip(*variants, strict=True)
    variant = names[rng.choice(len(names), p=np.array(weights) / sum(weights))]
    if variant == "phrasing":
        if phrase is None:
            raise ValueError('caption variant "phrasing" needs a phrase function (phrasing.training_caption)')
        return phrase(spec, rng)
    return caption(spec, variant, with_scale=variant != "colours" and rng.random() < 0.5)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HWC images -> float [B, 3, H, W] in [-1, 1] (the VAE's range)."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class TextureDataset:
    """An endless stream of (images [B,3,H,W] in [-1,1], captions) batches of random training textures."""

    def __init__(
        self,
        size: int = 64,
        seed: int = 0,
        pattern_weights: dict[str, float] | None = None,
        caption_mix: tuple[tuple[str, float], ...] = CAPTION_VARIANTS,
        phrase: Phrase | None = None,
    ) -> None:
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.pattern_weights = pattern_weights or None
        self.caption_mix = caption_mix
        self.phrase = phrase

    def spec(self) -> TextureSpec:
        return random_spec(self.rng, pattern_weights=self.pattern_weights)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        specs = [self.spec() for _ in range(batch_size)]
        imgs = [render(s, self.size, self.rng) for s in specs]
        return to_tensor(imgs), [random_caption(s, self.rng, self.caption_mix, self.phrase) for s in specs]

    def state(self) -> dict:
        return {"size": self.size, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class FolderDataset:
    """Images with a same-name `.txt` caption beside each (`cat.png` + `cat.txt`; no caption file = empty caption),
    resized (shorter side) and randomly cropped to `size`, with random horizontal flips."""

    def __init__(self, folder: str | Path, size: int = 64, seed: int = 0) -> None:
        self.folder = Path(folder)
        self.paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.folder}")
        self.size = size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def caption_of(self, path: Path) -> str:
        txt = path.with_suffix(".txt")
        return txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""

    def load(self, path: Path) -> np.ndarray:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = self.size / min(im.size)
            w, h = max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))
            im = im.resize((w, h), Image.Resampling.LANCZOS)
            left = int(self.rng.integers(w - self.size + 1))
            top = int(self.rng.integers(h - self.size + 1))
            arr = np.asarray(im.crop((left, top, left + self.size, top + self.size)))
        return arr[:, ::-1] if self.rng.random() < 0.5 else arr

    def batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        picks = self.rng.integers(len(self.paths), size=batch_size)
        paths = [self.paths[i] for i in picks]
        return to_tensor([self.load(p) for p in paths]), [self.caption_of(p) for p in paths]

    def state(self) -> dict:
        return {"size": self.size, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


ImageData = TextureDataset | FolderDataset
"""What the training stages read: batches of images in [-1, 1] with captions, and a resumable `state`."""


def iterate(dataset: ImageData, batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    while True:
        yield dataset.batch(batch_size)
