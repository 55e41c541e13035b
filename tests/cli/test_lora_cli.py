"""`sd-core txt2img --lora-dir ... --embeddings-dir ...`: prompt tags and `--lora NAME:W` apply the same LoRA, the PNG
records the hashes, embeddings are used by name, and an unknown LoRA is an error naming it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from lora_files import kohya_lora, save
from model_fixtures import TEXT_WIDTH, _cached_folder, write_tiny_checkpoint
from PIL import Image
from safetensors.torch import save_file

from sd_core.cli_options import _lora


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("cli_lora")
    ref = StableDiffusionPipeline.from_pretrained(
        str(_cached_folder(0, False, False)), local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    save(root / "loras" / "bricks.safetensors", kohya_lora(ref.unet, ref.text_encoder, seed=1))
    (root / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(2, TEXT_WIDTH)}, str(root / "embeddings" / "stonetex.safetensors"))
    return root, write_tiny_checkpoint(root / "tiny.safetensors")


def run(setup, out, prompt: str, *extra: str) -> subprocess.CompletedProcess:
    root, model = setup
    args = ["txt2img", "--model", str(model), "--prompt", prompt, "--steps", "2", "--width", "64", "--height", "64"]
    args += ["--seed", "3", "--dtype", "fp32", "--outdir", str(out), "--lora-dir", str(root / "loras")]
    args += ["--embeddings-dir", str(root / "embeddings"), *extra]
    return subprocess.run([sys.executable, "-m", "sd_core.cli", *args], capture_output=True, text=True, timeout=300)


def image(out) -> tuple[np.ndarray, str]:
    [path] = sorted(out.glob("*.png"))
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")), img.info["parameters"]


def test_tag_and_option_give_the_same_image(setup, tmp_path):
    tagged = run(setup, tmp_path / "a", "a wall <lora:bricks:0.5>")
    option = run(setup, tmp_path / "b", "a wall", "--lora", "bricks:0.5")
    plain = run(setup, tmp_path / "c", "a wall")
    assert tagged.returncode == option.returncode == plain.returncode == 0, tagged.stderr + option.stderr
    (a, params), (b, _), (c, _) = image(tmp_path / "a"), image(tmp_path / "b"), image(tmp_path / "c")
    assert np.array_equal(a, b) and np.abs(a.astype(float) - c).mean() > 1.0
    assert 'Lora hashes: "bricks: ' in params


def test_embedding_by_name(setup, tmp_path):
    result = run(setup, tmp_path, "stonetex wall")
    assert result.returncode == 0, result.stderr
    assert 'TI hashes: "stonetex: ' in image(tmp_path)[1]


def test_unknown_lora_is_an_error_naming_it(setup, tmp_path):
    result = run(setup, tmp_path, "a wall <lora:nosuch:1>")
    assert result.returncode != 0 and "'nosuch'" in result.stderr and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("style", ("style", (1.0, 1.0))),
        ("style:0.5", ("style", (0.5, 0.5))),
        ("style:0.2:1.1", ("style", (0.2, 1.1))),
        ("/loras/a:b.safetensors:0.3", ("/loras/a:b.safetensors", (0.3, 0.3))),
    ],
)
def test_lora_option_syntax(text, parsed):
    assert _lora(text) == parsed
