"""The tiny models and the test picture and mask the image-mode tests share (module-scoped: one load per module)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import write_tiny_checkpoint
from PIL import Image

import sd_core

SIZE = 64  # the test picture's side


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return sd_core.load(
        write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "sd1.safetensors"), device="cpu", dtype=torch.float32
    )


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("m") / "inp.safetensors", inpainting=True)
    return sd_core.load(path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A structured test picture: gradients, a disc and stripes."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    r = (x * 4) % 256
    g = (y * 4) % 256
    b = np.where((x - 40) ** 2 + (y - 24) ** 2 < 150, 230, 40) + ((x // 4) % 2) * 20
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8))


@pytest.fixture(scope="module")
def square_mask() -> Image.Image:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[16:40, 20:48] = 255
    return Image.fromarray(m, "L")
