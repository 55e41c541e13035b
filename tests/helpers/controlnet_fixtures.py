"""Tiny random-weight ControlNets (diffusers' `ControlNetModel`, the oracle) for the tiny SD1/SD2/SDXL test models,
saved as diffusers folders and written by sd_core in the original single-file layout.

Each is `ControlNetModel.from_unet` of the family's tiny UNet (so the real family hyperparameters no shape carries
come along: SD1's 8 heads, SD2/SDXL's 64-wide heads, 32 GroupNorm groups) with fresh random weights. diffusers
initialises the zero convs, the middle-block conv and the hint block's last conv to zero, as training starts; here
they are random, so the residuals are not zero and a wrong key, scale or injection point changes the images.
"""

from __future__ import annotations

import shutil
import tempfile
from functools import cache
from pathlib import Path

import torch
from model_fixtures import _cached_folder, _perturb

CONTROLNET_FIXTURE_VERSION = 2
HINT_CHANNELS = (16, 32, 96, 256)  # the released ControlNets' hint block (diffusers' default)


def randomize_zero_modules_(net, generator: torch.Generator, scale: float = 1.0):
    """Random weights where training starts from zeros: the zero convs, the middle-block conv, the hint's last conv."""
    zero = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero:
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0, scale / fan_in**0.5, generator=generator)
            conv.bias.normal_(0, 0.05, generator=generator)
    return net


def tiny_controlnet(family: str = "sd1", seed: int = 0):
    """A diffusers ControlNetModel for the tiny `family` model ("sd1", "sd2" or "sdxl"), random weights."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    if family == "sdxl":
        from sdxl_fixtures import sdxl_folder

        folder = sdxl_folder(0)
    else:
        folder = _cached_folder(0, family == "sd2", False)
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    torch.manual_seed(1000 + seed)
    net = ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=HINT_CHANNELS, load_weights_from_unet=False
    )
    g = torch.Generator().manual_seed(2000 + seed)
    _perturb(net, g)
    return randomize_zero_modules_(net, g).eval()


@cache
def controlnet_folder(family: str = "sd1", seed: int = 0) -> Path:
    """The tiny ControlNet as a diffusers folder, built once per machine (scratch folder renamed into place)."""
    root = Path(tempfile.gettempdir()) / "sd_core_tiny"
    final = root / f"controlnet-v{CONTROLNET_FIXTURE_VERSION}-{family}-seed{seed}"
    if (final / "config.json").exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    tiny_controlnet(family, seed).save_pretrained(scratch / "net")
    try:
        (scratch / "net").rename(final)
    except OSError:  # another process got there first
        pass
    shutil.rmtree(scratch, ignore_errors=True)
    return final


def write_controlnet_file(path: str | Path, family: str = "sd1", seed: int = 0, *, prefix: bool = True) -> Path:
    """The tiny ControlNet in the original single-file layout, read from its folder and written by sd_core."""
    from sd_core.controlnet import read_controlnet_state_dict, save_controlnet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_controlnet(path, read_controlnet_state_dict(controlnet_folder(family, seed)), prefix=prefix)


def diffusers_controlnet(family: str = "sd1", seed: int = 0):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(controlnet_folder(family, seed))).eval()
