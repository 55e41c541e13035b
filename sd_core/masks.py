"""Mask geometry for inpainting and outpainting: blur, grow, the only-masked crop box, latent-size masks, the
paste-back composite, A1111's "fill" content and the outpainting canvas. Conventions as in `sd_core.images`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .images import check_same_size, image_to_tensor, to_mask_array, to_rgb_array


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    half = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def blur_mask(mask: Any, radius: float) -> np.ndarray:
    """Gaussian blur of a mask; `radius` is A1111's "mask blur" in pixels, used as the standard deviation.

    The kernel is truncated at 3 sigma and the borders are edge-replicated, so a mask touching the image edge stays
    fully on at the edge. radius <= 0 returns the mask unchanged.
    """
    m = to_mask_array(mask)
    if radius <= 0:
        return m.copy()
    k = _gaussian_kernel(float(radius))
    half = (k.numel() - 1) // 2
    t = torch.from_numpy(m)[None, None]
    t = F.conv2d(F.pad(t, (half, half, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    t = F.conv2d(F.pad(t, (0, 0, half, half), mode="replicate"), k.view(1, 1, -1, 1))
    return np.ascontiguousarray(t[0, 0].clamp(0.0, 1.0).numpy())


def grow_mask(mask: Any, pixels: int) -> np.ndarray:
    """Dilate (pixels > 0) or erode (pixels < 0) a mask by |pixels|, keeping soft values (grey-level max/min).

    The shape is an octagon approximating a disk (alternating 3x3 square and cross steps); image borders neither
    grow nor shrink the mask.
    """
    m = to_mask_array(mask)
    if pixels == 0:
        return m.copy()
    t = torch.from_numpy(m)[None, None]
    if pixels < 0:
        t = 1.0 - t
    for step in range(abs(int(pixels))):
        if step % 2 == 0:
            t = F.max_pool2d(t, 3, stride=1, padding=1)
        else:
            horizontal = F.max_pool2d(t, (1, 3), stride=1, padding=(0, 1))
            vertical = F.max_pool2d(t, (3, 1), stride=1, padding=(1, 0))
            t = torch.maximum(horizontal, vertical)
    if pixels < 0:
        t = 1.0 - t
    return np.ascontiguousarray(t[0, 0].numpy())


def _fit_span(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """A span of `length` (at most `limit`) centred on [lo, hi), shifted to lie within [0, limit)."""
    length = min(length, limit)
    start = (lo + hi - length) // 2
    start = min(max(start, 0), limit - length)
    return start, start + length


def _aspect_box(bw: int, bh: int, width: int, height: int, multiple: int, img_w: int, img_h: int) -> tuple[int, int]:
    """Smallest size >= (bw, bh) with exactly the aspect width:height and sides multiples of `multiple`; if that does
    not fit in the image, the aspect and the multiples are approximated (the caller clamps to the image)."""
    g = math.gcd(width, height)
    r, q = width // g, height // g
    step = math.lcm(multiple // math.gcd(multiple, r), multiple // math.gcd(multiple, q))
    n = max(-(-bw // (r * step)), -(-bh // (q * step))) * step
    if r * n <= img_w and q * n <= img_h:
        return r * n, q * n
    target = width / height
    if bw / bh < target:
        bw = max(bw, math.ceil(bh * target - 1e-9))
    else:
        bh = max(bh, math.ceil(bw / target - 1e-9))
    return -(-bw // multiple) * multiple, -(-bh // multiple) * multiple


def mask_bbox(mask: Any, padding: int, width: int, height: int, multiple: int = 8) -> tuple[int, int, int, int]:
    """Crop box (x0, y0, x1, y1), x1/y1 exclusive (PIL's crop convention), for A1111's "inpaint only masked".

    The box of mask > 0, expanded by `padding` and clamped to the image, is enlarged (never shrunk) to the smallest
    box with exactly the aspect ratio of the working size `width` x `height` and sides multiples of `multiple`,
    centred on the masked area and shifted to stay inside the image. Where the image is too small for that, the
    aspect ratio and the multiples are approximated and a side longer than the image becomes the whole image side.
    Compute it on the blurred mask so the whole blend area lies inside the crop.
    """
    if width <= 0 or height <= 0 or multiple <= 0 or padding < 0:
        raise ValueError("width, height and multiple must be positive and padding non-negative")
    m = to_mask_array(mask)
    rows = np.flatnonzero(m.max(axis=1) > 0)
    cols = np.flatnonzero(m.max(axis=0) > 0)
    if rows.size == 0:
        raise ValueError("mask is empty")
    img_h, img_w = m.shape
    x0, x1 = max(int(cols[0]) - padding, 0), min(int(cols[-1]) + 1 + padding, img_w)
    y0, y1 = max(int(rows[0]) - padding, 0), min(int(rows[-1]) + 1 + padding, img_h)
    bw, bh = _aspect_box(x1 - x0, y1 - y0, width, height, multiple, img_w, img_h)
    x0, x1 = _fit_span(x0, x1, bw, img_w)
    y0, y1 = _fit_span(y0, y1, bh, img_h)
    return x0, y0, x1, y1


def latent_mask(mask: Any, latent_h: int, latent_w: int, mode: str = "area") -> torch.Tensor:
    """Mask at latent size, float32 [1, 1, h, w], for blended latent diffusion.

    "area" (default) averages each 8x8 block, so a latent is partly kept where its pixels are partly masked;
    "bilinear" is antialiased bilinear; "nearest" picks one pixel per latent. For the exact tensors diffusers'
    inpaint pipeline builds, use `diffusers_inpaint_condition`.
    """
    t = torch.from_numpy(to_mask_array(mask))[None, None]
    size = (int(latent_h), int(latent_w))
    if mode == "area":
        out = F.interpolate(t, size=size, mode="area")
    elif mode == "bilinear":
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    elif mode == "nearest":
        out = F.interpolate(t, size=size, mode="nearest")
    else:
        raise ValueError(f"mode must be 'area', 'bilinear' or 'nearest', got {mode!r}")
    return out.clamp(0.0, 1.0).contiguous()


def diffusers_inpaint_condition(image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What diffusers' StableDiffusionInpaintPipeline makes of an image and mask already at the working size.

    Returns (mask_latent [1, 1, H/8, W/8], masked_image [1, 3, H, W] in [-1, 1]), both float32: the mask is read as
    greyscale /255, binarised (>= 0.5 -> 1), the masked image is the image times (mask < 0.5) (repainted pixels become
    0, i.e. mid grey), and the latent mask is the binary mask downscaled with nearest interpolation. The pipeline then
    encodes masked_image with the VAE (diffusers samples the posterior with the generator) and scales it.
    Resizing is the caller's job (diffusers resizes PIL inputs with Lanczos first).
    """
    img = to_rgb_array(image)
    m = to_mask_array(mask)
    check_same_size(img, m)
    h, w = m.shape
    if h % 8 or w % 8:
        raise ValueError(f"image size must be a multiple of 8, got {w}x{h}")
    binary = torch.from_numpy((m >= 0.5).astype(np.float32))[None, None]
    masked_image = image_to_tensor(img) * (binary < 0.5)
    mask_lat = F.interpolate(binary, size=(h // 8, w // 8))
    return mask_lat, masked_image


def composite(original: Any, generated: Any, mask_blurred: Any) -> np.ndarray:
    """Paste generated pixels back: `original * (1 - m) + generated * m`, rounded to uint8 HxWx3.

    Where m == 0 the bytes are exactly the original's; where m == 1 exactly the generated ones.
    """
    orig = to_rgb_array(original, "original")
    gen = to_rgb_array(generated, "generated")
    m = to_mask_array(mask_blurred, "mask_blurred")
    check_same_size(orig, gen, "original", "generated")
    check_same_size(orig, m, "original", "mask_blurred")
    o = orig.astype(np.float32)
    mixed = o + (gen.astype(np.float32) - o) * m[:, :, None]
    out = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    keep = (m == 0)[:, :, None]
    return np.where(keep, orig, out)


def fill_masked(image: Any, mask: Any, *, radius: float = 32.0) -> np.ndarray:
    """A1111's "fill" masked content: masked pixels replaced by the surroundings' colours, smeared inward.

    Normalised convolution: blur(image * keep) / blur(keep) with a wide Gaussian, where keep = 1 - mask, repeated
    with shrinking radius so that far-inside pixels still get a colour; pixels outside the mask are unchanged.
    """
    img = to_rgb_array(image).astype(np.float32) / 255.0  # blur_mask works on [0, 1] planes
    m = to_mask_array(mask)
    check_same_size(img, m)
    keep = (m < 0.5).astype(np.float32)
    if not keep.any():
        return to_rgb_array(image).copy()
    out = img * keep[:, :, None]
    weight = keep.copy()
    for r in (radius, radius / 2, radius / 4):
        num = np.stack([blur_mask(out[:, :, c], r) for c in range(3)], axis=-1)
        den = blur_mask(weight, r)[:, :, None]
        smeared = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
        out = np.where(keep[:, :, None] > 0, img, smeared)
        weight = np.where(den[:, :, 0] > 1e-6, 1.0, weight).astype(np.float32)
    return np.clip(out * 255.0, 0, 255).round().astype(np.uint8)


# --- outpainting ------------------------------------------------------------------------------------------------


def _round_margins(size: int, a: int, b: int) -> tuple[int, int]:
    extra = -(size + a + b) % 8
    if b > 0 or a == 0:
        return a, b + extra
    return a + extra, b


def extend_canvas(
    image: Any,
    left: int = 0,
    top: int = 0,
    right: int = 0,
    bottom: int = 0,
    *,
    fill: str = "edge_noise",
    overlap: int = 8,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Outpainting canvas: (uint8 HxWx3 image with the new area prefilled, float32 HxW mask).

    Margins are rounded up so the new size is a multiple of 8 on each axis: the extra pixels go to the right
    (bottom) margin, or to the left (top) one if only that was asked for. Prefill, so the model gets colour and
    texture to continue rather than a flat grey it would keep: "edge_noise" edge-replicated pixels blurred and
    noised more the further they are from the image, "mirror" the image mirrored at its edges and blurred likewise,
    "edge" plain edge replication. The original pixels are untouched. The mask is 1 in the new area and reaches
    `overlap` pixels into the original along each extended side, so the seam is repainted too.
    """
    img = to_rgb_array(image)
    for label, v in (("left", left), ("top", top), ("right", right), ("bottom", bottom), ("overlap", overlap)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {v!r}")
    if fill not in ("edge_noise", "mirror", "edge"):
        raise ValueError(f"fill must be 'edge_noise', 'mirror' or 'edge', got {fill!r}")
    h, w = img.shape[:2]
    left, right = _round_margins(w, int(left), int(right))
    top, bottom = _round_margins(h, int(top), int(bottom))
    pads = ((top, bottom), (left, right), (0, 0))
    canvas = np.pad(img, pads, mode="symmetric" if fill == "mirror" else "edge").astype(np.float32)
    H, W = canvas.shape[:2]

    ys, xs = np.arange(H), np.arange(W)
    dy = np.maximum(np.maximum(top - ys, ys - (top + h - 1)), 0).astype(np.float32)
    dx = np.maximum(np.maximum(left - xs, xs - (left + w - 1)), 0).astype(np.float32)
    dist = np.maximum(dy[:, None], dx[None, :])
    new_area = dist > 0

    if fill != "edge" and new_area.any():
        margin = max(left, top, right, bottom)
        ramp = np.clip(dist / max(min(margin, 64), 1), 0.0, 1.0)[:, :, None]
        sigma = max(2.0, min(margin, 64) / 4.0)
        k = _gaussian_kernel(sigma)
        half = (k.numel() - 1) // 2
        t = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))[:, None]
        t = F.conv2d(F.pad(t, (half, half, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        t = F.conv2d(F.pad(t, (0, 0, half, half), mode="replicate"), k.view(1, 1, -1, 1))
        blurred = t[:, 0].numpy().transpose(1, 2, 0)
        filled = canvas + (blurred - canvas) * ramp
        if fill == "edge_noise":
            rng = np.random.default_rng(seed)
            filled = filled + rng.normal(0.0, 16.0, size=filled.shape).astype(np.float32) * ramp
        canvas = np.where(new_area[:, :, None], filled, canvas)
    out = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    out[top : top + h, left : left + w] = img

    mask = new_area.astype(np.float32)
    o = int(overlap)
    if left:
        mask[:, left : left + o] = 1.0
    if right:
        mask[:, max(left + w - o, left) : left + w] = 1.0
    if top:
        mask[top : top + o, :] = 1.0
    if bottom:
        mask[max(top + h - o, top) : top + h, :] = 1.0
    return out, mask
