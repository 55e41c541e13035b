"""ControlNet: a copy of the UNet's encoder that reads a control image (depth, edges, lines, normals) and adds its
residuals to the UNet's skips and middle block, so the generated image follows the control image.

- `load_controlnet(path)`, `save_controlnet(path, net)`: files (`files.py`), the config from the shapes (`config.py`),
  the network in the original layout (`model.py`).
- `Control(net, image, strength, start, end, ...)`: one unit, as `GenerationSettings.control` takes it (`unit.py`).
- `runner.py`: the units applied during sampling (image preparation, step windows, CFG halves, scales).
- `preprocess.py`: control maps made without downloaded models (canny, invert, depth and normals from renderer
  passes, scribble/threshold, none).
"""

from __future__ import annotations

from .config import ControlNetConfig, infer_controlnet_config
from .files import load_controlnet, read_controlnet_state_dict, save_controlnet
from .model import ControlNetModel
from .unit import Control

__all__ = [
    "Control",
    "ControlNetConfig",
    "ControlNetModel",
    "infer_controlnet_config",
    "load_controlnet",
    "read_controlnet_state_dict",
    "save_controlnet",
]
