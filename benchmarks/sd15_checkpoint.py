"""Write (once) a random-weight SD1.5-size checkpoint in the single-file layout, plus the diffusers config folder
that lets diffusers' `from_single_file` load it offline. Shared by the benchmarks."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from sd15_reference import random_sd15_state_dict, write_config_folder  # noqa: E402

DEFAULT_DIR = Path(tempfile.gettempdir()) / "sd_core_bench"


def sd15_checkpoint(directory: Path = DEFAULT_DIR) -> tuple[Path, Path]:
    """(single-file path, diffusers config folder); created on first use, reused after."""
    from safetensors.torch import save_file

    from sd_core.checkpoint import read_state_dict, write_safetensors

    single, config = directory / "sd15-random.safetensors", directory / "config"
    if single.exists() and (config / "model_index.json").exists():
        return single, config
    directory.mkdir(parents=True, exist_ok=True)
    write_config_folder(config)
    folder = write_config_folder(directory / "folder")
    for name, sd in random_sd15_state_dict(seed=0).items():
        fname = "model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / name / fname))
    write_safetensors(single.with_suffix(".tmp"), read_state_dict(folder))
    single.with_suffix(".tmp").rename(single)
    # written back before any benchmark times a load: otherwise the kernel is still writing these 8 GB to disk during
    # the first timed loads (seen: sd_core's fp32 load + first image 11-16 s in that run, 8-9 s with the disk idle)
    os.sync()
    return single, config


if __name__ == "__main__":
    print(*sd15_checkpoint(), sep="\n")
