"""Image conversions and sizes: PIL/numpy in, uint8 HxWx3 arrays, float32 masks and model tensors out.

Conventions: images are uint8 arrays HxWx3 (RGB); masks are float32 arrays HxW in [0, 1] where 1 (white) means
"repaint"; model tensors are float32 [B, 3, H, W] in [-1, 1]. Nothing here needs a model. Mask geometry and
paste-back are in `sd_core.masks`, colour matching in `sd_core.color`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import limits

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
    """Raise ValueError unless width and height are integers, multiples of 8, from 8 to 8192 (`sd_core.limits`)."""
    limits.check_side("width", width)
    limits.check_side("height", height)


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


def resize_rgb(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos resize (diffusers' choice for PIL inputs); the array itself when the size already matches."""
    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.LANCZOS))


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float32 mask, clipped to [0, 1]; the mask itself when the size already matches."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask, "F").resize((width, height), Image.BILINEAR)).clip(0, 1)
