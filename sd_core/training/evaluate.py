"""Does a texture model draw what it is asked? Measured with the detectors on prompts it never saw in training.

- `held_out_samples`: prompts that pair a colour with a pattern the training sampler never combined (`HELD_OUT`).
- `adherence`: fraction of samples with both asked colours and the asked pattern, at a given CFG scale.
- `negative_effect`: share of a colour's pixels with and without that colour as the negative prompt.
- `wrap_ratio`, `img2img_keeps_structure`, `inpaint_continues`: the seamless / image-mode checks.

- `judge_prompts` (issue 40's measure): prompts in people's phrasings (`phrasing.Prompt`), each image judged by
  `detectors.judge`: the asked pattern, both asked colours, and the asked colours in the asked roles (figure on
  background) where the prompt fixes them; overall rates and a per-pattern table. `prompt_pass_rates`: the same per
  prompt over several seeds (the README prompts check).

`python -m sd_core.training.evaluate [--model PATH]` prints all figures as JSON (the default model by default);
`--validation 3,7` prints only adherence on the validation samples, the ones to compare training choices on;
`--v2` prints `judge_prompts` on held-out phrasings and pairs (and trained ones) at the model's default CFG as JSON,
then the per-pattern table in markdown; `--v2 --validation-prompts` the same on the validation prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from . import detectors
from .data import COLOURS, DETECTABLE, HELD_OUT, PATTERNS, TextureSpec, allowed, caption, render
from .phrasing import Prompt, held_out_prompts, trained_prompts

EVAL = {"width": 64, "height": 64, "steps": 20, "sampler": "euler"}
"""Sampling settings of every check: the training size, 20 Euler steps."""


@dataclass(frozen=True)
class Sample:
    prompt: str
    colours: tuple[str, str]
    pattern: str
    seed: int


VALIDATION_SEEDS = {"held_out": (100, 5000), "trained": (101, 6000)}
"""(prompt seed, first image seed) of the validation samples. Training choices (recipes, phases, settings) are
compared on these, so the reported figures (the defaults: prompt seeds 0 and 1, images from 1000 and 2000) never
took part in a choice."""


def held_out_samples(n: int = 50, seed: int = 0, first_image_seed: int = 1000) -> list[Sample]:
    """`n` prompts, each pairing a held-out colour/pattern with a partner colour the pattern was trained with; the
    pairs take turns, partner and colour order vary; every sample has its own image seed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        colour, pattern = HELD_OUT[i % len(HELD_OUT)]
        partners = [c for c in COLOURS if c != colour and allowed(c, pattern)]
        other = partners[int(rng.integers(len(partners)))]
        fg, bg = (colour, other) if rng.random() < 0.5 else (other, colour)
        out.append(Sample(caption(TextureSpec(pattern, fg, bg, "small")), (fg, bg), pattern, first_image_seed + i))
    return out


def trained_samples(n: int = 50, seed: int = 1, first_image_seed: int = 2000) -> list[Sample]:
    """Like `held_out_samples` but with colour/pattern pairs seen in training (the comparison that shows how much of
    the gap is composition and how much is colour in general)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pattern = DETECTABLE[i % len(DETECTABLE)]
        ok = [c for c in COLOURS if allowed(c, pattern)]
        a, b = rng.choice(len(ok), size=2, replace=False)
        fg, bg = ok[int(a)], ok[int(b)]
        out.append(Sample(caption(TextureSpec(pattern, fg, bg, "small")), (fg, bg), pattern, first_image_seed + i))
    return out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """An `adherence` result without its per-sample list."""
    return {k: v for k, v in result.items() if k != "samples"}


def validation_samples(n: int = 100) -> dict[str, list[Sample]]:
    """Held-out and trained-pair samples for choosing between models (see `VALIDATION_SEEDS`)."""
    seeds = VALIDATION_SEEDS
    return {
        "held_out": held_out_samples(n, *seeds["held_out"]),
        "trained": trained_samples(n, *seeds["trained"]),
    }


def check(image: Image.Image | np.ndarray, colours: tuple[str, ...], pattern: str) -> tuple[bool, bool]:
    """(has the asked colours, has the asked pattern)."""
    return detectors.has_colours(image, colours), detectors.detect_pattern(image) == pattern


def generate(pipe: Any, prompt: str, seed: int, **options: Any) -> Image.Image:
    return pipe.txt2img(prompt, seed=seed, **{**EVAL, **options})[0]


def adherence(pipe: Any, samples: list[Sample], cfg_scale: float = 7.0, **options: Any) -> dict[str, Any]:
    """Fractions of samples with the right colours, the right pattern, and both."""
    images = [generate(pipe, s.prompt, s.seed, cfg_scale=cfg_scale, **options) for s in samples]
    return score(samples, images, cfg_scale)


def score(samples: list[Sample], images: list[Image.Image], cfg_scale: float) -> dict[str, Any]:
    """`adherence` of images already generated for `samples` (one each, in order) at `cfg_scale`."""
    results = []
    for s, image in zip(samples, images, strict=True):
        colour_ok, pattern_ok = check(image, s.colours, s.pattern)
        results.append({**asdict(s), "colour_ok": colour_ok, "pattern_ok": pattern_ok})
    n = max(1, len(results))
    return {
        "cfg_scale": cfg_scale,
        "n": len(results),
        "colours": sum(r["colour_ok"] for r in results) / n,
        "pattern": sum(r["pattern_ok"] for r in results) / n,
        "both": sum(r["colour_ok"] and r["pattern_ok"] for r in results) / n,
        "samples": results,
    }


def negative_effect(
    pipe: Any, colour: str, patterns: tuple[str, ...] = DETECTABLE, seeds: range = range(5), cfg_scale: float = 7.0
) -> dict[str, float]:
    """Mean share of `colour`'s pixels in pattern-only prompts ("checkerboard"), without and with `colour` as the
    negative prompt."""
    plain, negated = [], []
    for pattern in patterns:
        for seed in seeds:
            plain.append(detectors.colour_fractions(generate(pipe, pattern, seed, cfg_scale=cfg_scale))[colour])
            img = generate(pipe, pattern, seed, cfg_scale=cfg_scale, negative_prompt=colour)
            negated.append(detectors.colour_fractions(img)[colour])
    return {"colour": colour, "without": float(np.mean(plain)), "with": float(np.mean(negated))}


# --- seamless and image modes ---------------------------------------------------------------------------------------


def seam_steps(image: Image.Image | np.ndarray, axis: str = "x", cell: int = 8) -> tuple[float, float]:
    """(mean pixel step across the wrap edge, last column to first; mean step between interior neighbours at the same
    position modulo `cell`). Same position modulo the autoencoder's 8-pixel cell because the decoder draws edges on
    cell boundaries sharper than inside cells, and the wrap edge is a cell boundary. `axis="y"`: rows."""
    arr = detectors.as_array(image).astype(np.float64)
    if axis == "y":
        arr = arr.transpose(1, 0, 2)
    width = arr.shape[1]
    steps = np.abs(np.roll(arr, -1, axis=1) - arr).mean(axis=(0, 2))  # steps[j]: column j to j + 1; the last wraps
    return float(steps[-1]), float(steps[cell - 1 : width - 1 : cell].mean())


def wrap_ratio(images: list[Image.Image | np.ndarray], axes: str = "xy") -> float:
    """Seam steps over same-phase interior steps, summed over the images and axes: about 1 when the wrap edge is
    statistically like any interior step (a tiling texture), well above 1 when it is not."""
    pairs = [seam_steps(img, axis) for img in images for axis in axes]
    return sum(p[0] for p in pairs) / max(sum(p[1] for p in pairs), 1e-6)


def structure_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of the two images' grey levels, a plain measure of "same structure"."""
    ga, gb = a.astype(np.float64).mean(axis=-1).ravel(), b.astype(np.float64).mean(axis=-1).ravel()
    ga, gb = ga - ga.mean(), gb - gb.mean()
    return float((ga * gb).sum() / max(np.sqrt((ga * ga).sum() * (gb * gb).sum()), 1e-9))


def reference_texture(spec: TextureSpec, seed: int, size: int = 64) -> np.ndarray:
    return render(spec, size, np.random.default_rng(seed), jitter=0.0)


def img2img_keeps_structure(pipe: Any, spec: TextureSpec, seed: int = 0, strength: float = 0.3) -> dict[str, Any]:
    """img2img at low strength on a generator texture: same pattern and colours, high correlation with the input."""
    src = reference_texture(spec, seed)
    out = np.asarray(
        pipe.img2img(
            Image.fromarray(src),
            caption(spec),
            strength=strength,
            seed=seed,
            cfg_scale=7.0,
            **{k: v for k, v in EVAL.items() if k not in ("width", "height")},
        )[0]
    )
    colour_ok, pattern_ok = check(out, (spec.fg, spec.bg), spec.pattern)
    return {"correlation": structure_similarity(src, out), "colour_ok": colour_ok, "pattern_ok": pattern_ok}


def inpaint_continues(pipe: Any, spec: TextureSpec, seed: int = 0, box: tuple[int, int] = (20, 44)) -> dict[str, Any]:
    """Inpaint a square hole in a generator texture: inside the hole the result should correlate with the texture
    that was there (the pattern continued), far more than with the same pattern shifted by half a period."""
    src = reference_texture(spec, seed)
    mask = np.zeros(src.shape[:2], np.uint8)
    lo, hi = box
    mask[lo:hi, lo:hi] = 255
    out = np.asarray(
        pipe.inpaint(
            Image.fromarray(src),
            Image.fromarray(mask),
            caption(spec),
            seed=seed,
            cfg_scale=7.0,
            mask_blur=0,
            **{k: v for k, v in EVAL.items() if k not in ("width", "height")},
        )[0]
    )
    hole = (slice(lo, hi), slice(lo, hi))
    return {
        "correlation": structure_similarity(src[hole], out[hole]),
        "outside_unchanged": bool(np.array_equal(src[mask == 0], out[mask == 0])),
    }


def report(pipe: Any, n: int = 50) -> dict[str, Any]:
    """Every figure of the acceptance checks (minutes on a CPU at the default 64 px)."""
    samples = held_out_samples(n)
    cfg7 = adherence(pipe, samples, 7.0)
    cfg1 = adherence(pipe, samples, 1.0)
    own = pipe.defaults.cfg_scale  # the model's own scale (3 for the built-in one)
    trained = adherence(pipe, trained_samples(n), own)
    # each image once: the adherence figures and the wrap ratios (first 10) read the same images
    plain = [generate(pipe, s.prompt, s.seed, cfg_scale=own) for s in samples]
    tiles = [generate(pipe, s.prompt, s.seed, cfg_scale=own, tiling="xy") for s in samples]  # seamless: same asks
    default, tiled = score(samples, plain, own), score(samples, tiles, own)
    spec = TextureSpec("vertical stripes", "red", "white", "small")
    return {
        "held_out_cfg7": summary(cfg7),
        "held_out_cfg1": summary(cfg1),
        "held_out_default_cfg": summary(default),
        "trained_pairs_default_cfg": summary(trained),
        "held_out_default_cfg_tiling": summary(tiled),
        "failures_cfg7": [s["prompt"] for s in cfg7["samples"] if not (s["colour_ok"] and s["pattern_ok"])],
        "negative": [negative_effect(pipe, c) for c in ("red", "blue", "green")],
        "wrap_ratio_tiling": wrap_ratio(tiles[:10]),
        "wrap_ratio_plain": wrap_ratio(plain[:10]),
        "img2img": img2img_keeps_structure(pipe, spec),
        "inpaint": inpaint_continues(pipe, TextureSpec("checkerboard", "black", "yellow", "large")),
    }


# --- issue 40: people's phrasings, judged for pattern, colours and roles -------------------------------------------

V2_SEEDS = {"held_out": (0, 10_000), "trained": (1, 20_000), "validation": (100, 30_000)}
"""(prompt seed, first image seed) of `v2_prompts`. Choices (recipes, phases, CFG) are made on "validation" (held-out
phrasings and pairs too, other prompts and seeds); "held_out" and "trained" are only reported."""
CHECKS = ("pattern_ok", "colours_ok", "roles_ok", "ok")


def v2_prompts(kind: str = "held_out", n: int = 160) -> tuple[list[Prompt], list[int]]:
    """The prompts and image seeds of one `V2_SEEDS` set (patterns take turns: n / 8 of each)."""
    prompt_seed, first = V2_SEEDS[kind]
    prompts = trained_prompts(n, prompt_seed) if kind == "trained" else held_out_prompts(n, prompt_seed)
    return prompts, [first + i for i in range(n)]


def judge_image(image: Image.Image | np.ndarray, prompt: Prompt) -> dict[str, bool]:
    """`detectors.judge` for one prompt. Roles are checked where the phrasing fixes them (`prompt.roles`) and, for
    dots, grid and bricks, where it names one colour only: "red bricks" asks for red bricks (not red mortar),
    "dots on a blue background" for a blue surround."""
    one_named = (prompt.figure is None) != (prompt.background is None)
    roles_asked = prompt.roles or (one_named and prompt.pattern in detectors.ROLE_PATTERNS)
    verdict = detectors.judge(image, prompt.pattern, prompt.figure, prompt.background, roles_asked=roles_asked)
    return {**verdict, "roles_asked": roles_asked}


def rates(verdicts: list[dict[str, bool]]) -> dict[str, Any]:
    """n and the share of each check (`CHECKS`) among `verdicts` ("roles" counts a prompt that asked no roles as
    right), and `roles_asked`: how many asked roles, `roles_of_asked`: the share of those right."""
    n = len(verdicts)
    asked = [v for v in verdicts if v.get("roles_asked")]
    return {
        "n": n,
        **{c.removesuffix("_ok"): sum(v[c] for v in verdicts) / max(1, n) for c in CHECKS},
        "roles_asked": len(asked),
        "roles_of_asked": sum(v["roles_ok"] for v in asked) / len(asked) if asked else None,
    }


def judge_prompts(
    pipe: Any, prompts: Sequence[Prompt], seeds: Sequence[int], cfg_scale: float | None = None, **options: Any
) -> dict[str, Any]:
    """One image per prompt (`seeds[i]` for `prompts[i]`) at `cfg_scale` (None: the model's default), judged by
    `judge_image`: the overall shares of pattern, colours, roles and all three right, a per-pattern table of the
    same, and every sample's verdict."""
    images = [
        generate(pipe, p.text, seed, cfg_scale=cfg_scale, **options) for p, seed in zip(prompts, seeds, strict=True)
    ]
    return judged(prompts, seeds, images, cfg_scale if cfg_scale is not None else pipe.defaults.cfg_scale)


def judged(prompts: Sequence[Prompt], seeds: Sequence[int], images: Sequence[Any], cfg_scale: float) -> dict[str, Any]:
    """`judge_prompts` of images already generated."""
    samples = []
    for p, seed, image in zip(prompts, seeds, images, strict=True):
        samples.append({**asdict(p), "seed": seed, **judge_image(image, p)})
    per_pattern = {
        pattern: rates([s for s in samples if s["pattern"] == pattern])
        for pattern in PATTERNS
        if any(s["pattern"] == pattern for s in samples)
    }
    return {"cfg_scale": cfg_scale, **rates(samples), "per_pattern": per_pattern, "samples": samples}


def markdown_table(result: dict[str, Any]) -> str:
    """The per-pattern table of a `judge_prompts` result, and the overall line, in markdown. Roles: the share right
    among the prompts that asked for roles (dots, grid, bricks with both colours placed, or one colour named)."""
    lines = [
        "| pattern | n | pattern right | colours right | roles right (of prompts asking roles) | all right |",
        "|---|---|---|---|---|---|",
    ]
    rows = [*result["per_pattern"].items(), ("**all**", result)]
    for name, r in rows:
        roles = f"{r['roles_of_asked']:.2f} of {r['roles_asked']}" if r["roles_asked"] else "- (none asked)"
        lines.append(f"| {name} | {r['n']} | {r['pattern']:.2f} | {r['colours']:.2f} | {roles} | {r['ok']:.2f} |")
    return "\n".join(lines)


def prompt_pass_rates(
    pipe: Any, items: Sequence[tuple[Prompt, Sequence[int]]], cfg_scale: float | None = None, **options: Any
) -> list[dict[str, Any]]:
    """Per prompt, over its seeds (e.g. the README's prompts on 10 seeds each): the shares of `CHECKS`."""
    out = []
    for prompt, seeds in items:
        verdicts = [judge_image(generate(pipe, prompt.text, s, cfg_scale=cfg_scale, **options), prompt) for s in seeds]
        out.append({"prompt": prompt.text, **rates(verdicts)})
    return out


def report_v2(pipe: Any, n: int = 160, validation: bool = False) -> dict[str, Any]:
    """`judge_prompts` at the model's default CFG: held-out phrasings and pairs, and trained ones for comparison
    (`validation`: the validation prompts only)."""
    kinds = ("validation",) if validation else ("held_out", "trained")
    return {kind: judge_prompts(pipe, *v2_prompts(kind, n)) for kind in kinds}


def main(argv: list[str] | None = None) -> int:
    import sd_core

    parser = argparse.ArgumentParser(prog="python -m sd_core.training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint (default: the built-in model)")
    parser.add_argument("--n", type=int, default=None, help="samples per set (default 50; --v2: 160)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument(
        "--validation", metavar="CFGS", help="only adherence on the validation samples at these CFG scales, e.g. 3,7"
    )
    parser.add_argument("--v2", action="store_true", help="judge_prompts: people's phrasings, pattern/colours/roles")
    parser.add_argument("--validation-prompts", action="store_true", help="with --v2: the validation prompts only")
    args = parser.parse_args(argv)
    if args.validation_prompts and not args.v2:
        parser.error("--validation-prompts goes with --v2")
    if args.v2 and args.validation:
        parser.error("--validation CFGS is the first version's check; with --v2 use --validation-prompts")
    pipe = sd_core.load(args.model, device="cpu", dtype=args.dtype)  # None: the built-in model
    if args.v2:
        results = report_v2(pipe, args.n or 160, args.validation_prompts)
        json.dump(
            {
                k: {**summary(r), "failures": [s["text"] for s in r["samples"] if not s["ok"]]}
                for k, r in results.items()
            },
            sys.stdout,
            indent=2,
        )
        print()
        for kind, r in results.items():
            print(f"\n{kind} (CFG {r['cfg_scale']:g}):\n")
            print(markdown_table(r))
        return 0
    if args.validation:
        scales = [float(c) for c in args.validation.split(",")]
        result = {
            f"{name}_cfg{cfg:g}": summary(adherence(pipe, samples, cfg))
            for name, samples in validation_samples(args.n or 50).items()
            for cfg in scales
        }
    else:
        result = report(pipe, args.n or 50)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
