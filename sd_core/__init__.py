"""sd_core: a local Stable Diffusion engine."""

__version__ = "0.1.0"
