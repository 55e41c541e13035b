"""`/sdapi/v1/extra-single-image` and `/sdapi/v1/extra-batch-images`: A1111's "Extras" upscaling.

As A1111's upscale postprocessing: `upscaler_1` "None" leaves the image as it is; otherwise the image is upscaled by
`upscaling_resize` (resize_mode 0) or by the factor that covers `upscaling_resize_w` x `upscaling_resize_h`
(resize_mode 1, centred and cropped to that size with `upscaling_crop`), to the factor's size floored to a multiple
of 8 (`upscalers.Upscaler.upscale`); `upscaler_2` upscales the original the same way and is blended in by
`extras_upscaler_2_visibility`. Upscalers are looked up in `upscalers.py`: the pixel ones and the ESRGAN-family
models of `--upscaler-dir` (read once per request; a model is loaded once per request, run on the server's device in
tiles). Face restoration (`gfpgan_visibility`, `codeformer_visibility` above 0) is refused: no face restoration model
ships.
The result keeps the input's PNG text (its `parameters`) and adds A1111's `postprocessing` text; `html_info` is that
text as A1111's HTML. The work is a job in the FIFO queue, like a generation.
"""

from __future__ import annotations

import html
import json
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import Field, model_validator

from . import upscalers
from .codec import decode_image, png_b64
from .errors import invalid
from .schemas import ApiModel

Unit = Field(0.0, ge=0, le=1, allow_inf_nan=False)


class ExtrasRequest(ApiModel):
    resize_mode: Literal[0, 1] | None = Field(0, description="0: by upscaling_resize; 1: to upscaling_resize_w x _h")
    show_extras_results: bool | None = True
    gfpgan_visibility: float | None = Unit
    codeformer_visibility: float | None = Unit
    codeformer_weight: float | None = Unit
    upscaling_resize: float | None = Field(2.0, gt=0, le=64, allow_inf_nan=False)
    upscaling_resize_w: int | None = Field(512, ge=1, le=65536)
    upscaling_resize_h: int | None = Field(512, ge=1, le=65536)
    upscaling_crop: bool | None = True
    upscaler_1: str | None = Field(upscalers.NONE, max_length=1000)
    upscaler_2: str | None = Field(upscalers.NONE, max_length=1000)
    extras_upscaler_2_visibility: float | None = Unit
    upscale_first: bool | None = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class ExtrasSingleImageRequest(ExtrasRequest):
    image: str = Field("", description="base64 image")


class FileData(ApiModel):
    data: str = Field(description="base64 image")
    name: str = Field(max_length=1000)


class ExtrasBatchImagesRequest(ExtrasRequest):
    imageList: list[FileData] = Field(max_length=1000)  # noqa: N815 - A1111's name


class ExtrasSingleImageResponse(ApiModel):
    html_info: str
    image: str | None = None


class ExtrasBatchImagesResponse(ApiModel):
    html_info: str
    images: list[str]


def _quote(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def check(req: ExtrasRequest, choices: upscalers.Upscalers = upscalers.BUILTIN) -> None:
    """422 for what cannot be done: face restoration, upscalers not among `choices` (as A1111, an unknown upscaler_2
    only counts when upscaler_1 upscales)."""
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, name):
            raise invalid(name, f"{name}: face restoration is not available: no face restoration model ships")
    if req.upscaler_1 != upscalers.NONE:
        upscalers.get(req.upscaler_1 or upscalers.NONE, "upscaler_1", choices)
        if req.upscaler_2 != upscalers.NONE:
            upscalers.get(req.upscaler_2 or upscalers.NONE, "upscaler_2", choices)


def upscale(
    img: Image.Image, req: ExtrasRequest, max_pixels: int, choices: upscalers.Upscalers = upscalers.BUILTIN
) -> tuple[Image.Image, dict[str, Any]]:
    """One image through the upscale step (upscalers from `choices`, checked by `check`); the A1111 postprocessing
    info of what was done."""
    img = img.convert("RGB")
    info: dict[str, Any] = {}
    if req.upscaler_1 == upscalers.NONE:
        return img, info
    w, h = req.upscaling_resize_w or 512, req.upscaling_resize_h or 512
    if req.resize_mode == 1:
        by = max(w / img.width, h / img.height)
        info["Postprocess upscale to"] = f"{w}x{h}"
    else:
        by = req.upscaling_resize or 2.0
        info["Postprocess upscale by"] = by
    out_w, out_h = int(img.width * by // 8 * 8), int(img.height * by // 8 * 8)
    field = "upscaling_resize" if req.resize_mode != 1 else "upscaling_resize_w"
    if out_w * out_h > max_pixels or out_w < 1 or out_h < 1:
        raise invalid(
            field,
            f"{field}: {img.width}x{img.height} would become {out_w}x{out_h}, outside this server's "
            f"limits (1 to {max_pixels} pixels)",
        )
    crop = req.resize_mode == 1 and req.upscaling_crop is not False

    def one(name: str, field: str) -> Image.Image:
        result = upscalers.get(name, field, choices).upscale(img, by)
        if crop:
            canvas = Image.new("RGB", (w, h))
            canvas.paste(result, (w // 2 - result.width // 2, h // 2 - result.height // 2))
            result = canvas
        return result

    result = one(req.upscaler_1 or upscalers.NONE, "upscaler_1")
    if crop:
        info["Postprocess crop to"] = f"{w}x{h}"
    info["Postprocess upscaler"] = req.upscaler_1
    if req.upscaler_2 != upscalers.NONE and req.extras_upscaler_2_visibility:
        result = Image.blend(
            result, one(req.upscaler_2 or upscalers.NONE, "upscaler_2"), req.extras_upscaler_2_visibility
        )
        info["Postprocess upscaler 2"] = req.upscaler_2
    return result, info


def encode(original: Image.Image, result: Image.Image, info: dict[str, Any], pnginfo: bool) -> tuple[str, str]:
    """(base64 PNG, the postprocessing text): the input's own PNG text kept, A1111's `postprocessing` text added."""
    text = ", ".join(k if k == v else f"{k}: {_quote(v)}" for k, v in info.items())
    chunks = {k: v for k, v in original.info.items() if isinstance(k, str) and isinstance(v, str)} if pnginfo else {}
    if pnginfo:
        chunks["postprocessing"] = text
    return png_b64(result, text=chunks), text


def as_html(text: str) -> str:
    """A1111's `plaintext_to_html`."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def create_router(sd: Any, errors: dict[int | str, dict[str, Any]], wait: Any) -> APIRouter:
    """The two extras routes; `wait(kind, fn)` runs `fn` as a queued job and awaits it."""
    r = APIRouter()

    def process(images: list[Image.Image], req: ExtrasRequest, choices: upscalers.Upscalers) -> tuple[list[str], str]:
        pnginfo = bool(sd.options.get("enable_pnginfo"))
        out, text = [], ""
        for img in images:
            result, info = upscale(img, req, sd.settings.max_input_pixels, choices)
            encoded, text = encode(img, result, info, pnginfo)
            out.append(encoded)
        return out, as_html(text)

    @r.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleImageResponse, responses=errors)
    async def extra_single_image(req: ExtrasSingleImageRequest) -> dict[str, Any]:
        """Upscale one image (A1111's Extras tab)."""
        choices = upscalers.available(sd.settings)
        await run_in_threadpool(check, req, choices)  # may read the upscaler folders
        img = decode_image(req.image, "image", sd.settings.max_input_pixels)
        images, html_info = await wait("extras", lambda ctx: process([img], req, choices))
        return {"html_info": html_info, "image": images[0]}

    @r.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchImagesResponse, responses=errors)
    async def extra_batch_images(req: ExtrasBatchImagesRequest) -> dict[str, Any]:
        """Upscale several images the same way."""
        choices = upscalers.available(sd.settings)
        await run_in_threadpool(check, req, choices)
        limit = sd.settings.max_input_pixels
        imgs = [decode_image(f.data, f"imageList[{i}].data", limit) for i, f in enumerate(req.imageList)]
        images, html_info = await wait("extras", lambda ctx: process(imgs, req, choices))
        return {"html_info": html_info, "images": images}

    return r
