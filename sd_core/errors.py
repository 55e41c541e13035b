"""Exceptions shared across sd_core."""

from __future__ import annotations


class Cancelled(Exception):
    """Raised by a progress callback to stop a run. Samplers do not catch it: it reaches the caller unchanged."""


class Interrupted(Exception):
    """Raised by a progress callback to stop sampling early and finish with what there is: the run's images are made
    from the model's latest clean estimate (A1111's "interrupt"), flagged `info["interrupted"] = True`.

    That estimate is the `denoised` of the step the callback was given: the callback runs after each step's model
    call, so even an interrupt at step 1 has one (a blurry image, not nothing). The rest of the run goes on as after
    a last step to sigma 0: inpainting keeps the original outside the mask, the latents are decoded, pasted back and
    given their parameters text. Raised anywhere else than from a step's callback, it reaches the caller."""
