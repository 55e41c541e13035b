"""A pipeline's add-on networks: the LoRAs of its folders, merged in per generation (`sd_core.lora`), and its
textual-inversion embeddings (`sd_core.embeddings`, used by `StableDiffusion.encode_prompt`).

Each `StableDiffusion` owns one `ExtraNetworks` (`pipe.extra_networks`), given its folders by `sd_core.load(...,
lora_dirs=..., embedding_dirs=...)`. At the start of every generation `activate(settings)` brings the model to
exactly the LoRAs that generation asks for: `settings.loras` (names in the folders, or file paths from Python) and
the prompt's `<lora:name:te:unet>` tags (names only). Files are read once and kept while unchanged on disk; the
merged weights stay until a generation asks for other LoRAs (or none), so repeated runs with the same LoRAs cost
nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .embeddings import EmbeddingLibrary
from .lora.files import SUFFIXES, LoraError, LoraFile, file_identity, lora_hash, read_lora
from .lora.keys import LayerIndex
from .lora.library import LoraLibrary
from .lora.patch import Applied, LoraPatcher
from .lora.tags import LoraTag, split_tags
from .settings import GenerationSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveLora:
    """A LoRA in force for a generation: as the request named it (A1111's alias in the infotext), the file, the
    multipliers, and how many of the file's layers this model has."""

    name: str
    applied: Applied

    @property
    def hash(self) -> str:
        return lora_hash(self.applied.lora.path, self.applied.lora.metadata)


def lora_networks(family: str, unet: nn.Module, text_encoder: nn.Module) -> dict[str, nn.Module]:
    """The networks LoRA files address, by `lora.keys.Component.attribute`: SD1/SD2 the UNet and the text encoder;
    SDXL the UNet and each tower of its conditioner on its own (`text_encoder` CLIP-L, `text_encoder_2` bigG, as
    kohya's `lora_te1_`/`lora_te2_` and diffusers' components), the refiner's one tower being bigG."""
    if not family.startswith("sdxl"):
        return {"unet": unet, "text_encoder": text_encoder}
    towers = list(text_encoder.embedders)
    names = ["text_encoder", "text_encoder_2"][-len(towers) :]
    return {"unet": unet, **dict(zip(names, towers, strict=True))}


class ExtraNetworks:
    """The LoRA folders and the LoRAs merged into one pipeline's `networks` ({attribute: module}, `lora_networks`) of
    `family`."""

    def __init__(
        self,
        family: str,
        networks: dict[str, nn.Module],
        lora_dirs: Iterable[str | os.PathLike] = (),
        embedding_dirs: Iterable[str | os.PathLike] = (),
    ) -> None:
        self.family = family
        self.networks = networks
        self.loras = LoraLibrary(lora_dirs)
        self.embeddings = EmbeddingLibrary(embedding_dirs)
        self.patcher = LoraPatcher(networks)
        self._index: LayerIndex | None = None
        self._files: dict[str, LoraFile] = {}

    @property
    def index(self) -> LayerIndex:
        if self._index is None:
            self._index = LayerIndex(self.family, self.networks)
        return self._index

    def lora_file(self, path: Path) -> LoraFile:
        """The file read and matched to this model (cached while its size and time stamp stay the same)."""
        identity = file_identity(path)
        cached = self._files.get(identity[0])
        if cached is None or cached.identity != identity:
            cached = read_lora(path, self.index)
            if cached.unmatched:
                log.warning(
                    "LoRA %s: %d layers patched, %d keys match no layer of this model (e.g. %s)",
                    path,
                    len(cached.layers),
                    len(cached.unmatched),
                    cached.unmatched[0],
                )
            self._files[identity[0]] = cached
        return cached

    def find(self, name: str, *, allow_path: bool) -> Path:
        """A LoRA's file: a name in the folders, or (Python callers, `allow_path`) a path to a file."""
        if allow_path and (os.sep in name or "/" in name or Path(name).suffix.lower() in SUFFIXES):
            path = Path(name).expanduser()
            if not path.is_file():
                raise LoraError(f"LoRA file not found: {path}")
            return path
        return self.loras.find(name)

    def wanted(self, settings: GenerationSettings, prompt: str | None = None) -> list[ActiveLora]:
        """The LoRAs a generation asks for: `settings.loras`, then the tags of `prompt` (default: the settings')."""
        _, tags = split_tags(settings.prompt if prompt is None else prompt) if settings.extra_networks else ("", [])
        requested: list[tuple[LoraTag, bool]] = [(t, True) for t in settings.loras] + [(t, False) for t in tags]
        out = []
        for tag, allow_path in requested:
            lora = self.lora_file(self.find(tag.name, allow_path=allow_path))
            name = Path(tag.name).stem if allow_path else tag.name
            out.append(ActiveLora(name, Applied(lora, tag.te, tag.unet)))
        return out

    def activate(self, settings: GenerationSettings, prompt: str | None = None, *, compiled: bool = False) -> list:
        """Merge exactly the LoRAs `settings` (and `prompt`'s tags) ask for, restoring the model's weights first
        when they differ from those in force. Returns them (`ActiveLora`) for the parameters text."""
        active = self.wanted(settings, prompt)
        if compiled and (active or self.patcher.applied):
            raise LoraError(
                "LoRAs cannot be applied to or removed from a torch.compile'd pipeline (its weights are frozen into "
                "it): compile after choosing the LoRAs' weights, or load the model again"
            )
        self.patcher.set([a.applied for a in active])
        return active


def infotext_fields(active: list[ActiveLora]) -> dict[str, str]:
    """A1111's `Lora hashes` field: "name: hash, ..." (names without ':' and ',', as A1111 writes them)."""
    if not active:
        return {}
    seen: dict[str, str] = {}
    for item in active:
        seen.setdefault(item.name.replace(":", "").replace(",", ""), item.hash)
    return {"Lora hashes": ", ".join(f"{name}: {digest}" for name, digest in seen.items())}
