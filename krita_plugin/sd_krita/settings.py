"""The docker's settings: one dataclass, stored as strings in any key/value store (Krita's settings in the plugin).

Kept free of Krita and Qt so the defaults and the round trip are testable anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from . import sizes

SOURCES = ("visible", "layer")  # what the model sees: the visible canvas or the active layer only


PARSERS = {
    "str": str,
    "int": int,
    "float": float,
    "float | None": float,
    "bool": lambda text: text.strip().lower() in ("1", "true", "yes", "on"),
}  # by the field's annotation (a string: `from __future__ import annotations`)


@dataclass
class Settings:
    server_url: str = "http://127.0.0.1:7860"
    python: str = ""  # an interpreter with sd-core installed, used to start the server
    model: str = ""  # checkpoint the started server loads
    lora_dir: str = ""  # the started server's LoRA folder (--lora-dir); empty: none
    styles_file: str = ""  # the started server's A1111 styles.csv (--styles); empty: none
    controlnet_dir: str = ""  # the started server's ControlNet folder (--controlnet-dir); empty: none
    port: int = 7860
    prompt: str = ""
    negative_prompt: str = ""
    loras: str = ""  # "name:weight, ...": the server's LoRAs, sent as <lora:name:weight> tags after the prompt
    style: str = ""  # one of the server's prompt styles (A1111's `styles`); empty: none
    strength: float = 0.75
    steps: int = 20
    sampler: str = "Euler a"
    cfg_scale: float | None = None  # None: the model's own (sent as nothing; the server fills it in)
    seed: int = -1  # -1: the server picks one
    candidates: int = 1
    grow: int = 8  # pixels the selection grows before feathering
    feather: int = 16  # pixels over which the result fades into the original
    margin: int = 64  # context pixels around the selection the model sees
    resolution: int = 512  # the model's working size (about resolution**2 pixels) while `size` is "fit"
    size: str = ""  # "" (fit the region at `resolution`) or WIDTHxHEIGHT: one of the model's sizes (sizes.py)
    source: str = "visible"
    colour_match: bool = True  # remove the drift measured where the result should equal the original
    folds: str = ""  # the docker's open sections, comma-separated ("" : all folded, the compact view)
    upscale_factor: int = 2
    upscaler: str = "Lanczos"
    control_layer: str = ""  # the name of the layer sent as a ControlNet input (control.py); empty: none
    control_module: str = "none"  # the server's preprocessor for it: none, invert, scribble, threshold, canny
    control_model: str = ""  # one of the server's /controlnet/model_list
    control_weight: float = 1.0
    sd_upscale: bool = False  # Upscale also img2imgs the enlarged canvas in tiles at Strength (A1111's SD upscale)

    def to_strings(self) -> dict[str, str]:
        """Every field as a string; None (the model's own value) as an empty one."""
        return {f.name: "" if getattr(self, f.name) is None else str(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> Settings:
        """Unknown keys are ignored and unreadable values fall back to the default, so old settings never break; an
        empty value is the default too (for `cfg_scale`: the model's own)."""
        settings = cls()
        for f in fields(cls):
            text = values.get(f.name)
            if text is None or text == "":
                continue
            parse = PARSERS[str(f.type)]
            try:
                setattr(settings, f.name, parse(text))
            except ValueError:
                continue
        if settings.source not in SOURCES:
            settings.source = "visible"
        if sizes.parse(settings.size) is None:
            settings.size = sizes.FIT
        return settings
