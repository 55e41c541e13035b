"""LoRA-family files for the engine: reading them (`files`), where their keys land (`keys`), their maths
(`networks`), merging them into a pipeline's weights and back (`patch`), the folders they live in (`library`) and
A1111's prompt tags (`tags`). A pipeline uses them through `sd_core.extra_networks`."""

from .files import LoraError, LoraFile, lora_hash, read_lora
from .library import LoraEntry, LoraLibrary
from .tags import LoraTag, parse_tag, split_tags, strip_tags

__all__ = [
    "LoraEntry",
    "LoraError",
    "LoraFile",
    "LoraLibrary",
    "LoraTag",
    "lora_hash",
    "parse_tag",
    "read_lora",
    "split_tags",
    "strip_tags",
]
