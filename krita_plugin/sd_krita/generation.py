"""Captured pixels -> an A1111 request -> result layers' pixels. Pure Python: runs in a worker thread, not Krita's.

The plugin crops, scales and masks itself (so it controls seams and colours) and asks the server for a plain
inpaint at the working size: `inpaint_full_res` off, `mask_blur` 0, the mask already hard where the result will
show. The soft, feathered mask is kept back and becomes the result layer's alpha.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass
from typing import Any

from . import control, regions
from .regions import LayerPixels, Plan, RegionError
from .sd_client import decode_png, encode_png_rgba, lora_tags, parse_loras
from .settings import Settings


@dataclass(frozen=True)
class Capture:
    """What the plugin read from the document on Krita's thread: pixels over `plan.box`."""

    plan: Plan
    image: bytes | None  # B, G, R, A over plan.box; None for txt2img
    selection: bytes | None  # one byte per pixel over plan.box; None: the whole box is replaced
    control: bytes | None = None  # the control layer's B, G, R, A over plan.box; None: no control layer


@dataclass(frozen=True)
class Request:
    kind: str  # "img2img" or "txt2img"
    payload: dict[str, Any]
    plan: Plan
    alpha: bytes  # the result layer's alpha over plan.box
    original: bytes | None  # R, G, B at the working size, what the model was shown
    keep: bytes | None  # at the working size: where the result should equal the original (None: no matching)


@dataclass(frozen=True)
class Candidate:
    name: str
    seed: int | None
    pixels: LayerPixels


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_of(planes: list[bytes], width: int, height: int) -> str:
    """Base64 PNG (opaque RGBA, the shared client's encoder) of three planes: R, G, B or a grey mask thrice."""
    return b64(encode_png_rgba(width, height, regions.merge([*planes, b"\xff" * (width * height)])))


def common_payload(settings: Settings, plan: Plan) -> dict[str, Any]:
    """The settings every request carries. The server checks them (sd-core's limits) and says what is wrong; a
    CFG scale left as None is left out, so the server uses the model's own. The chosen LoRAs become A1111 prompt
    tags (a LoRA the server cannot apply is its error, naming it)."""
    try:
        loras = parse_loras(settings.loras)
    except ValueError as exc:
        raise RegionError(str(exc)) from None
    payload: dict[str, Any] = {
        "prompt": lora_tags(settings.prompt, loras),
        "negative_prompt": settings.negative_prompt,
        "seed": settings.seed,
        "steps": settings.steps,
        "sampler_name": settings.sampler,
        "width": plan.work_w,
        "height": plan.work_h,
        "batch_size": max(1, settings.candidates),
    }
    if settings.cfg_scale is not None:
        payload["cfg_scale"] = settings.cfg_scale
    if settings.style:
        payload["styles"] = [settings.style]  # the server merges the style's texts into the prompts (A1111's rule)
    return payload


def build_request(capture: Capture, settings: Settings, strength: float | None = None) -> Request:
    """The request for a capture: img2img with a mask when there is an image, txt2img otherwise."""
    plan = capture.plan
    box = plan.box
    if capture.selection is None:
        alpha = b"\xff" * (box.w * box.h)
    else:
        alpha = regions.shape_mask(capture.selection, box.w, box.h, plan.grow, plan.feather)
        if alpha.count(0) == len(alpha):
            raise RegionError("The selection is empty inside the canvas.")
    payload = common_payload(settings, plan)
    if capture.control is not None:
        control.check(settings)
        control.attach(payload, control.unit(control.control_image(capture.control, plan), plan, settings))
    if capture.image is None:
        return Request("txt2img", payload, plan, alpha, None, None)
    original = regions.resize(regions.bgra_to_rgb(capture.image), box.w, box.h, 3, plan.work_w, plan.work_h)
    denoise = settings.strength if strength is None else strength
    if capture.selection is None:  # Refine of the whole canvas: img2img, no mask
        init = png_of(regions.split(original, 3), plan.work_w, plan.work_h)
        payload.update({"init_images": [init], "denoising_strength": denoise})
        return Request("img2img", payload, plan, alpha, original, None)
    work_alpha = regions.resize_plane(alpha, box.w, box.h, plan.work_w, plan.work_h)
    hard = regions.harden(work_alpha)
    payload.update(
        {
            "init_images": [png_of(regions.split(original, 3), plan.work_w, plan.work_h)],
            "mask": png_of([hard, hard, hard], plan.work_w, plan.work_h),
            "mask_blur": 0,
            "inpainting_fill": 1,
            "inpaint_full_res": False,
            "inpaint_full_res_padding": 0,
            "denoising_strength": denoise,
        }
    )
    keep = regions.kept_pixels(hard, plan.work_w, plan.work_h) if settings.colour_match else None
    return Request("img2img", payload, plan, alpha, original, keep)


def response_seeds(response: dict[str, Any], count: int, fallback: int) -> list[int | None]:
    """Seeds of the returned images, from A1111's `info` JSON text (`all_seeds`, else `seed`)."""
    info = response.get("info")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except ValueError:
            info = None
    if isinstance(info, dict):
        seeds = info.get("all_seeds")
        if isinstance(seeds, list) and seeds:
            return [int(seeds[min(i, len(seeds) - 1)]) for i in range(count)]
        if isinstance(info.get("seed"), int):
            return [info["seed"]] * count
    return [fallback if fallback >= 0 else None] * count


def layer_name(prompt: str, seed: int | None, index: int, count: int) -> str:
    """`prompt (seed N)`, shortened, with the candidate number when there are several."""
    text = " ".join(prompt.split()) or "(no prompt)"
    if len(text) > 40:
        text = text[:39] + "…"
    label = f"{text} (seed {seed})" if seed is not None else text
    return f"{label} #{index + 1}" if count > 1 else label


def read_response(request: Request, response: dict[str, Any], settings: Settings) -> list[Candidate]:
    """The server's images -> result layers' pixels, colour-matched, with the layer alpha = shaped mask."""
    images = response.get("images")
    if not isinstance(images, list) or not images:
        raise RegionError("The server returned no images.")
    count = max(1, settings.candidates)
    images = images[:count]  # A1111 may append extra images (masks); candidates come first
    seeds = response_seeds(response, len(images), settings.seed)
    plan = request.plan
    out = []
    for i, (image, seed) in enumerate(zip(images, seeds, strict=True)):
        try:
            w, h, rgba = decode_png(base64.b64decode(image))
        except (ValueError, TypeError, zlib.error) as exc:
            raise RegionError(f"The server returned an unreadable image: {exc}") from None
        if (w, h) != (plan.work_w, plan.work_h):
            raise RegionError(f"The server returned a {w}x{h} image; {plan.work_w}x{plan.work_h} was requested.")
        rgb = regions.merge(regions.split(rgba, 4)[:3])
        pixels = regions.composite(rgb, plan, request.alpha, request.original, request.keep)
        out.append(Candidate(layer_name(settings.prompt, seed, i, len(images)), seed, pixels))
    return out
