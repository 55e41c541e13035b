"""Model-free image work for img2img, inpainting and outpainting: conversions, sizes, mask geometry, paste-back.

Conventions: images are uint8 arrays HxWx3 (RGB); masks are float32 arrays HxW in [0, 1] where 1 (white) means
"repaint"; model tensors are float32 [B, 3, H, W] in [-1, 1]. Nothing here needs a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MIN_SIZE = 64
# 8192 px a side: a 1024x1024 latent. Larger sizes are far beyond what SD1/SD2 produce coherently and the decoder's
# activations alone would need tens of GB; refusing early beats an out-of-memory error after the sampling.
MAX_SIZE = 8192

# ITU-R 601-2 luma, the weights PIL's convert("L") uses, so array and PIL masks give the same values.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --- conversions ------------------------------------------------------------------------------------------------


def _check_array(arr: Any, name: str, allowed_dtypes: tuple[str, ...]) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name}: expected a PIL image or a numpy array, got {type(arr).__name__}")
    if arr.size == 0:
        raise ValueError(f"{name}: the array is empty (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected 1, 3 or 4 channels (HxWxC), got shape {arr.shape}")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name}: expected an HxW or HxWxC array, got {arr.ndim} dimensions (shape {arr.shape})")
    if arr.dtype == np.bool_:
        kind = "bool"
    elif arr.dtype == np.uint8:
        kind = "uint8"
    elif np.issubdtype(arr.dtype, np.floating):
        kind = "float"
    else:
        kind = str(arr.dtype)
    if kind not in allowed_dtypes:
        raise ValueError(f"{name}: dtype {arr.dtype} is not supported; use {' or '.join(allowed_dtypes)}")
    if kind == "float":
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: float array contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{name}: float values must lie in [0, 1], got min {lo:g}, max {hi:g}")
    return arr


def _float_to_uint8(arr: np.ndarray) -> np.ndarray:
    return np.round(arr.astype(np.float32) * 255.0).astype(np.uint8)


def to_rgb_array(image: Any, name: str = "image") -> np.ndarray:
    """Any PIL image or numpy array (HxW, HxWx1/3/4, uint8 or float in [0, 1]) -> contiguous uint8 HxWx3.

    Alpha is dropped (not composited): the colour under transparent pixels is kept. Use `alpha_to_mask` to turn
    transparency into an inpainting mask. 16-bit PIL modes are scaled down to 8 bits.
    """
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{name}: the image is empty ({image.width}x{image.height})")
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
            grey = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.array(image, dtype=np.uint8)
    arr = _check_array(image, name, ("uint8", "float"))
    if arr.dtype != np.uint8:
        arr = _float_to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def to_mask_array(mask: Any, name: str = "mask") -> np.ndarray:
    """Any PIL image or numpy array -> float32 HxW in [0, 1], 1 (white) = repaint.

    Colour masks use their luminance (PIL's ITU-R 601-2 "L" conversion, as diffusers' mask processor does); alpha is
    ignored (see `alpha_to_mask`). Arrays may be bool, uint8 (/255) or float in [0, 1].
    """
    if isinstance(mask, Image.Image):
        if mask.width == 0 or mask.height == 0:
            raise ValueError(f"{name}: the image is empty ({mask.width}x{mask.height})")
        if mask.mode == "F":
            return to_mask_array(np.asarray(mask, dtype=np.float32), name)
        if mask.mode != "L":
            mask = mask.convert("L")
        return np.asarray(mask, dtype=np.float32) / np.float32(255.0)
    arr = _check_array(mask, name, ("bool", "uint8", "float"))
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.dtype == np.uint8:
            return to_mask_array(Image.fromarray(np.ascontiguousarray(arr[:, :, :3]), "RGB"), name)
        else:
            arr = arr[:, :, :3].astype(np.float32) @ _LUMA
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    return np.clip(np.ascontiguousarray(arr, dtype=np.float32), 0.0, 1.0)


def alpha_to_mask(image: Any, name: str = "image") -> np.ndarray:
    """Repaint mask from transparency: float32 HxW, 1 - alpha (fully transparent = 1 = repaint).

    Partial transparency gives a partial mask. Raises ValueError if the image has no alpha channel.
    """
    if isinstance(image, Image.Image):
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
        if not has_alpha:
            raise ValueError(f"{name}: image mode {image.mode} has no alpha channel")
        alpha = np.asarray(image.convert("RGBA"), dtype=np.uint8)[:, :, 3]
        return np.float32(1.0) - alpha.astype(np.float32) / np.float32(255.0)
    arr = _check_array(image, name, ("uint8", "float"))
    if arr.ndim != 3 or arr.shape[2] != 4:
        raise ValueError(f"{name}: an alpha mask needs an HxWx4 array, got shape {arr.shape}")
    alpha = arr[:, :, 3].astype(np.float32)
    if arr.dtype == np.uint8:
        alpha = alpha / np.float32(255.0)
    return np.ascontiguousarray(np.float32(1.0) - alpha)


def check_same_size(image: np.ndarray, mask: np.ndarray, image_name: str = "image", mask_name: str = "mask") -> None:
    """Raise ValueError naming both sizes (WxH) when an image and a mask differ in size."""
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(
            f"{image_name} and {mask_name} sizes differ: {image_name} is {image.shape[1]}x{image.shape[0]}, "
            f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} (width x height)"
        )


def image_to_tensor(image: Any) -> torch.Tensor:
    """Image -> float32 [1, 3, H, W] in [-1, 1], with diffusers' preprocessing arithmetic (x / 255 * 2 - 1, float32)."""
    arr = to_rgb_array(image).astype(np.float32) / np.float32(255.0)
    arr = np.float32(2.0) * arr - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


def tensor_to_arrays(t: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, H, W] (or [3, H, W]) in [-1, 1] -> uint8 HxWx3 arrays.

    Matches diffusers' postprocess byte for byte: `(x * 0.5 + 0.5).clamp(0, 1)` in the tensor's own dtype, then
    float32, `* 255`, round half to even (numpy), uint8. Raises on NaN/inf (an fp16 VAE overflow) instead of
    silently producing black pixels.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"tensor_to_arrays: expected a torch.Tensor, got {type(t).__name__}")
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[1] != 3:
        raise ValueError(f"tensor_to_arrays: expected [B, 3, H, W], got {tuple(t.shape)}")
    t = t.detach()
    if not torch.isfinite(t).all():
        raise ValueError("tensor_to_arrays: the image tensor contains NaN or infinity (fp16 VAE overflow?)")
    x = (t * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    x = (x * 255).round().astype(np.uint8)
    return [np.ascontiguousarray(a) for a in x]


def tensor_to_images(t: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> RGB PIL images (rounding as in `tensor_to_arrays`)."""
    return [Image.fromarray(a, "RGB") for a in tensor_to_arrays(t)]


# --- sizes ------------------------------------------------------------------------------------------------------


def check_size(width: int, height: int) -> None:
    """Raise ValueError unless width and height are integers, multiples of 8, from 64 to 8192.

    Multiples of 8 because the VAE maps each 8x8 pixel block to one latent; the limits are `MIN_SIZE`/`MAX_SIZE`.
    """
    for label, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{label} must be an integer, got {value!r}")
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"{label} must be from {MIN_SIZE} to {MAX_SIZE} pixels, got {value}")
        if value % 8:
            raise ValueError(f"{label} must be a multiple of 8, got {value} (nearest: {round_to_multiple(value)})")


def round_to_multiple(value: float, multiple: int = 8, mode: str = "nearest") -> int:
    """Round a size to a multiple of `multiple` ("nearest", "up" or "down"), never below `multiple`."""
    if mode == "nearest":
        n = math.floor(value / multiple + 0.5)
    elif mode == "up":
        n = math.ceil(value / multiple)
    elif mode == "down":
        n = math.floor(value / multiple)
    else:
        raise ValueError(f"mode must be 'nearest', 'up' or 'down', got {mode!r}")
    return int(max(n, 1) * multiple)


# --- mask geometry ----------------------------------------------------------------------------------------------


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


# --- paste-back and colour ----------------------------------------------------------------------------------------


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


_SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_XYZ_TO_SRGB = np.linalg.inv(_SRGB_TO_XYZ)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or float in [0, 255]) sRGB HxWx3 -> CIE L*a*b* (D65), float64."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _WHITE_D65
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65) -> sRGB float64 in [0, 255] (clipped, not rounded)."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE_D65
    lin = np.clip(xyz @ _XYZ_TO_SRGB.T, 0.0, 1.0)
    c = np.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.clip(c * 255.0, 0.0, 255.0)


def color_match(
    generated: Any, original: Any, mask: Any, *, ring: int | None = 32, strength: float = 1.0
) -> np.ndarray:
    """Match the colour statistics of the repainted region to its surroundings (uint8 HxWx3 result).

    In CIE Lab (own sRGB<->Lab math, D65) and per channel, the generated pixels inside the mask (weighted by the mask)
    are shifted and scaled so their mean and standard deviation equal those of the original's unmasked pixels within
    `ring` pixels of the mask (`ring=None`: all unmasked pixels). The std ratio is clamped to [0.5, 2] so a flat
    region cannot blow noise up. The change is applied in proportion to mask * strength: pixels with mask == 0 keep
    their exact bytes. Without unmasked surroundings (mask covers everything) the image is returned unchanged.
    """
    gen = to_rgb_array(generated, "generated")
    orig = to_rgb_array(original, "original")
    m = to_mask_array(mask)
    check_same_size(gen, orig, "generated", "original")
    check_same_size(gen, m, "generated", "mask")
    rows, cols = np.flatnonzero(m.max(axis=1) > 0), np.flatnonzero(m.max(axis=0) > 0)
    if rows.size == 0:
        return gen.copy()
    crop: tuple[slice, slice] = (slice(None), slice(None))
    if ring is not None:  # only the mask's box plus the ring matters
        r = int(ring)
        crop = (slice(max(rows[0] - r, 0), rows[-1] + r + 1), slice(max(cols[0] - r, 0), cols[-1] + r + 1))
    mm = m[crop]
    inside = mm > 0
    outside = mm == 0
    if ring is not None:
        outside &= grow_mask(inside.astype(np.float32), int(ring)) > 0
    if not outside.any():
        return gen.copy()
    region = rgb_to_lab(gen[crop][inside])
    surround = rgb_to_lab(orig[crop][outside])
    w = mm[inside].astype(np.float64)[:, None]
    mean_g = (region * w).sum(0) / w.sum()
    std_g = np.sqrt((((region - mean_g) ** 2) * w).sum(0) / w.sum())
    mean_o, std_o = surround.mean(0), surround.std(0)
    ratio = np.clip(std_o / np.maximum(std_g, 1e-6), 0.5, 2.0)
    ratio = np.where(std_g < 1e-6, 1.0, ratio)
    matched = (region - mean_g) * ratio + mean_o
    amount = np.clip(w * float(strength), 0.0, 1.0)
    out = gen.copy()
    view = out[crop]
    view[inside] = np.round(lab_to_rgb(region + (matched - region) * amount)).astype(np.uint8)
    return out


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
