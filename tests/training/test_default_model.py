"""Acceptance checks on the shipped built-in model (`sd_core/data/default_model.safetensors`): it loads through the
ordinary loader, draws colour/pattern pairs it never saw together, follows guidance and negative prompts, tiles, and
works with img2img and inpainting. 64 px images and 20 Euler steps keep the whole file to a minute or two on a CPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core import checkpoint, cli
from sd_core.loader import BUILTIN_MODEL
from sd_core.training import data, evaluate
from sd_core.training.phrasing import Prompt

MODEL = BUILTIN_MODEL
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="built-in model not installed")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@functools.cache
def pipe():
    return sd_core.load(str(MODEL), device="cpu", dtype="fp32")


@functools.cache
def held_out(cfg_scale: float) -> dict:
    return evaluate.adherence(pipe(), evaluate.held_out_samples(50), cfg_scale)


@functools.cache
def trained_pairs(cfg_scale: float) -> dict:
    return evaluate.adherence(pipe(), evaluate.trained_samples(50), cfg_scale)


def test_small_file_in_the_sd1_layout():
    assert MODEL.stat().st_size <= 25 * 2**20
    assert pipe().config.family == "sd1" and not pipe().config.inpainting
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in checkpoint.read_shapes(str(MODEL)))  # fmt: skip


def test_names_its_own_default_cfg_scale():
    meta = checkpoint.read_metadata(str(MODEL))
    assert meta["sd_core.cfg_scale"] == "3" and meta["sd_core.resolution"] == "64"
    assert pipe().defaults.cfg_scale == 3.0 and (pipe().defaults.width, pipe().defaults.height) == (64, 64)


def test_held_out_colour_pattern_pairs_reach_the_target():
    """The issue's acceptance: 80% of 50 held-out samples right, at the model's own default scale (3, chosen on the
    validation samples, which share no image with these). Measured 0.80 (the first version too)."""
    result = held_out(pipe().defaults.cfg_scale)
    failures = [s["prompt"] for s in result["samples"] if not (s["colour_ok"] and s["pattern_ok"])]
    assert result["n"] == 50
    assert result["both"] >= 0.8, failures


def test_held_out_pairs_at_cfg_7_do_not_regress():
    """At A1111's usual scale the model does worse (guidance also amplifies a wrong colour): measured 0.70 (the first
    version 0.78)."""
    assert held_out(7.0)["both"] >= 0.6


def test_guidance_raises_adherence():
    """On colour/pattern pairs seen in training (measured 0.76 at CFG 7 vs 0.50 at CFG 1; held-out pairs 0.78
    vs 0.58, and 0.80 at the model's default 3)."""
    assert trained_pairs(7.0)["both"] >= trained_pairs(1.0)["both"] + 0.1


@pytest.mark.parametrize("colour", ["black", "white"])
def test_negative_prompt_removes_its_colour(colour):
    effect = evaluate.negative_effect(pipe(), colour, seeds=range(3))
    assert effect["without"] >= 0.05  # the colour does show up in pattern-only prompts
    assert effect["with"] <= 0.25 * effect["without"], effect


def test_seam_is_like_any_interior_step_only_when_tiling():
    """Image-work acceptance: with tiling="xy" the step across the wrap edge is, over two dozen prompts, the size of
    the steps between neighbouring columns/rows inside the image; without tiling it is clearly larger. At the model's
    own scale (measured 0.86 vs 1.41; the first version 1.08 vs 1.61, at CFG 7 1.29 vs 1.77)."""
    samples = evaluate.held_out_samples(24)
    tiled = [evaluate.generate(pipe(), s.prompt, s.seed, cfg_scale=None, tiling="xy") for s in samples]
    plain = [evaluate.generate(pipe(), s.prompt, s.seed, cfg_scale=None) for s in samples]
    assert 0.8 <= evaluate.wrap_ratio(tiled) <= 1.25  # measured 0.86
    assert evaluate.wrap_ratio(plain) >= 1.3  # measured 1.41


def test_seamless_textures_keep_the_asked_colours():
    """Trained with circular padding half the time (phases 7 and 8), the model draws the asked colours with tiling
    on too (before: 0.21 of two dozen trained pairs right with tiling, 0.88 without). Measured 0.72 of 50 (the first
    version 0.82: the fine-tune on people's phrasings, phases 9 and 10, cost some of it)."""
    result = evaluate.adherence(pipe(), evaluate.held_out_samples(50), pipe().defaults.cfg_scale, tiling="xy")
    assert result["both"] >= 0.7, result["both"]


def test_img2img_at_low_strength_keeps_the_structure():
    result = evaluate.img2img_keeps_structure(pipe(), data.TextureSpec("vertical stripes", "red", "white", "small"))
    assert result["correlation"] >= 0.8 and result["pattern_ok"] and result["colour_ok"], result


def test_inpainting_continues_the_pattern():
    result = evaluate.inpaint_continues(pipe(), data.TextureSpec("checkerboard", "black", "yellow", "large"))
    assert result["outside_unchanged"] and result["correlation"] >= 0.5, result


def test_cli_without_model_uses_the_built_in_one(tmp_path, capsys):
    code = cli.main(["txt2img", "--prompt", "blue and white horizontal stripes", "--width", "64", "--height", "64",
                     "--seed", "3", "--outdir", str(tmp_path), "--dtype", "fp32"])  # fmt: skip
    assert code == 0
    (path,) = tmp_path.glob("*.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert evaluate.check(image, ("blue", "white"), "horizontal stripes") == (True, True)


README_PROMPTS = (
    (Prompt("blue and white horizontal stripes", "horizontal stripes", "blue", "white", False), "xy"),
    (Prompt("a red and white checkerboard pattern", "checkerboard", "red", "white", False), None),
    (Prompt("blue waves on a white background", "waves", "blue", "white", False), None),
    (Prompt("yellow and black vertical stripes", "vertical stripes", "yellow", "black", False), None),
    (Prompt("seamless green and black checkerboard", "checkerboard", "green", "black", False), None),
    (Prompt("black and orange noise", "noise", "black", "orange", False), None),
)
"""The README's first command (with its --tiling xy) and the five more prompts the README shows for the built-in
model, as `evaluate.judge_image` reads them (pattern, colours, roles where the phrasing fixes them)."""


@pytest.mark.parametrize(("prompt", "tiling"), README_PROMPTS, ids=[p.text for p, _ in README_PROMPTS])
def test_readme_prompts_draw_what_they_say_on_ten_seeds(prompt, tiling):
    """Issue 40's acceptance 3: at the model's defaults (CFG 3, 64 px, Euler 20), seeds 1-10, every image right."""
    options = {"tiling": tiling} if tiling else {}
    (result,) = evaluate.prompt_pass_rates(pipe(), [(prompt, range(1, 11))], **options)
    assert result["ok"] == 1.0, result
