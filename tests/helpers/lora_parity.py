"""One LoRA parity run for both families' tests: sd_core's image against diffusers' with the same adapters loaded
(`load_lora_weights`, the PEFT backend), same prompt, size, steps, guidance and seed; acceptance under 1/255."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PROMPT, NEGATIVE = "a red brick wall, highly detailed", "blurry"
SIZE, CFG, SEED = 64, 7.5, 77


@dataclass(frozen=True)
class ParityRun:
    steps: int

    def ours(self, pipe, prompt: str = PROMPT, **kw) -> np.ndarray:
        img = pipe.txt2img(
            prompt, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, steps=self.steps, sampler="ddim",
            cfg_scale=CFG, seed=SEED, **kw,
        )[0]  # fmt: skip
        return np.asarray(img, dtype=np.float64)

    def theirs(self, reference, adapters: dict[str, object], lora_dir) -> np.ndarray:
        """diffusers' image with `adapters` {file stem: weight, or {"unet": w, "text_encoder": w, ...}} loaded."""
        reference.unload_lora_weights()
        for name in adapters:
            reference.load_lora_weights(str(lora_dir / f"{name}.safetensors"), adapter_name=name)
        if adapters:
            reference.set_adapters(list(adapters), list(adapters.values()))
        out = reference(
            PROMPT, negative_prompt=NEGATIVE, width=SIZE, height=SIZE, num_inference_steps=self.steps,
            guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(SEED), output_type="np",
        )  # fmt: skip
        reference.unload_lora_weights()
        return (out.images[0] * 255).round().astype(np.float64)


def assert_same(mine: np.ndarray, ref: np.ndarray, base: np.ndarray) -> None:
    assert np.abs(ref - base).mean() > 3.0, "the LoRA must change the reference image, or the test proves nothing"
    diff = np.abs(mine - ref).mean()
    assert diff < 1.0, f"mean abs pixel difference {diff:.3f} >= 1/255"
