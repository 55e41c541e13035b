"""Base64 images in and out: strict decoding with errors that name the field, PNGs that carry their parameters."""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, PngImagePlugin

from .api_error import ApiError, invalid

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def b64_to_bytes(text: object, field: str) -> bytes:
    """Decode base64 (a `data:...;base64,` prefix and line breaks allowed); anything else is a 422."""
    if not isinstance(text, str):
        raise invalid(field, f"{field}: expected a base64 string")
    body = _WHITESPACE.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if not body:
        raise invalid(field, f"{field}: the image is empty")
    body += "=" * (-len(body) % 4)  # some encoders drop the padding
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(field, f"{field}: not valid base64 ({exc})") from None


def decode_image(text: object, field: str, max_pixels: int) -> Image.Image:
    """A fully loaded PIL image from base64; size checked from the header before any pixel is decoded."""
    data = b64_to_bytes(text, field)
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if w < 1 or h < 1:
            raise invalid(field, f"{field}: the image is empty ({w}x{h})")
        if w * h > max_pixels:
            raise invalid(field, f"{field}: the image is {w}x{h}, more than this server's limit of {max_pixels} pixels")
        img.load()
    except ApiError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data: OSError, SyntaxError, struct.error, ...
        raise invalid(field, f"{field}: not a readable image ({type(exc).__name__}: {exc})") from None
    return img


def png_bytes(img: Image.Image, parameters: str | None = None, text: dict[str, str] | None = None) -> bytes:
    """PNG with the A1111 `parameters` text chunk (what png-info and other tools read back) and any other `text`."""
    chunks = {**({"parameters": parameters} if parameters else {}), **(text or {})}
    info = None
    if chunks:
        info = PngImagePlugin.PngInfo()
        for key, value in chunks.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_b64(img: Image.Image, parameters: str | None = None, text: dict[str, str] | None = None) -> str:
    return base64.b64encode(png_bytes(img, parameters, text)).decode("ascii")
