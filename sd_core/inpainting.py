"""Inpainting with any model, seam-free and never touching pixels outside the (blurred) mask.

Steps: blur the mask (A1111 "mask blur"); choose the region (the whole image, or with `only_masked` the blurred
mask's box plus `padding`, enlarged to the working size's aspect ratio); resize it to the working size; optionally
prefill the masked content (`prepare_region`); generate (ordinary models: blended latent diffusion; 9-channel models:
mask and masked-image latents as extra input, as diffusers: `sd_core.modes`); resize back; optionally colour-match
to the surroundings; paste back with the blurred mask, so pixels where it is 0 keep their exact bytes (`paste_back`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import color, images, masks
from .settings import GenerationSettings, InpaintOptions


@dataclass(frozen=True)
class Region:
    """The part of the input an inpainting run repaints, at the input's size and at the working size."""

    image: np.ndarray  # the whole input, uint8 HxWx3
    blurred: np.ndarray  # the blurred mask over the whole input, float32 HxW
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the region in the input
    work_image: np.ndarray  # the region resized to the working size (and prefilled)
    work_mask: np.ndarray  # the blurred mask of the region at the working size

    @property
    def crop(self) -> tuple[np.ndarray, np.ndarray]:
        """The region's pixels and blurred mask at the input's size."""
        x0, y0, x1, y1 = self.box
        return self.image[y0:y1, x0:x1], self.blurred[y0:y1, x0:x1]


def prepare_region(image: Any, mask: Any, settings: GenerationSettings) -> Region:
    """Blur the mask, pick the region and bring it to the working size (`settings.width` x `settings.height`,
    resolved); A1111's "fill" content is prefilled here."""
    options = settings.inpaint or InpaintOptions()
    arr = images.to_rgb_array(image)
    m = images.to_mask_array(mask)
    images.check_same_size(arr, m)
    if not (m > 0).any():
        raise ValueError("mask is empty: nothing to inpaint (white marks the area to repaint)")
    blurred = masks.blur_mask(m, options.mask_blur)
    width, height = settings.width, settings.height
    assert width is not None and height is not None, "settings must be resolved"
    if options.only_masked:
        box = masks.mask_bbox(blurred, options.padding, width, height)
    else:
        box = (0, 0, arr.shape[1], arr.shape[0])
    x0, y0, x1, y1 = box
    work_image = images.resize_rgb(arr[y0:y1, x0:x1], width, height)
    work_mask = images.resize_mask(blurred[y0:y1, x0:x1], width, height)
    if options.fill == "fill":
        work_image = masks.fill_masked(work_image, work_mask)
    return Region(arr, blurred, box, work_image, work_mask)


def fill_latents(init: torch.Tensor, work_mask: np.ndarray, fill: str, generator: torch.Generator) -> torch.Tensor:
    """A1111's latent fills: the masked latents replaced by fresh noise ("latent_noise", drawn from `generator`) or
    zeros ("latent_nothing"); other fills leave `init` as it is."""
    if fill not in ("latent_noise", "latent_nothing"):
        return init
    lm = masks.latent_mask(work_mask, init.shape[-2], init.shape[-1])
    replacement = torch.randn(init.shape, generator=generator) if fill == "latent_noise" else 0.0
    return init * (1 - lm) + replacement * lm


def paste_back(generated: list[np.ndarray], region: Region, options: InpaintOptions) -> list[np.ndarray]:
    """Each generated working-size image resized back into the region, colour-matched if asked, and composited over
    the input with the blurred mask (pixels where it is 0 keep their exact bytes)."""
    x0, y0, x1, y1 = region.box
    crop, crop_mask = region.crop
    results = []
    for img in generated:
        patch = images.resize_rgb(img, x1 - x0, y1 - y0)
        if options.color_match:
            patch = color.color_match(patch, crop, crop_mask)
        pasted = region.image.copy()
        pasted[y0:y1, x0:x1] = patch
        results.append(masks.composite(region.image, pasted, region.blurred))
    return results
