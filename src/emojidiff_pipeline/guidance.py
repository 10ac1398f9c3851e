"""Separate guidance for the expression branch (compositional classifier-free guidance).

Under classifier-free guidance the UNet sees a batch [unconditional, conditional] of 2n rows and the diffusers loop
forms ``eps = eps_u + g * (eps_c - eps_u)``. With an expression guidance scale ``g_e`` the conditional rows run twice,
with the expression branch on (``eps_c``) and off (``eps_x``, identity and text kept), and the prediction becomes

    eps = eps_u + g * (eps_x - eps_u) + g_e * (eps_c - eps_x)

so the template's expression is pushed by its own scale, as InstructPix2Pix guides its image and text conditions
separately. The parent's loop is left untouched: a pre-hook widens the UNet's inputs to 3n rows [u, c, c] (the
adapter's conditioning holds the matching [null, full, expression-off] rows, see
:meth:`~emojidiff_pipeline.mixin.EmojiDiffMixin.prepare_conditioning`) and a post-hook folds the output back to
2n rows [eps_u, eps_x + (g_e / g) (eps_c - eps_x)], which the loop's own formula turns into the sum above. ``g_e ==
g`` is ordinary guidance; ``g_e == 0`` ignores the template.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def check_expression_guidance_scale(value: Any, guidance_scale: Any, has_expression: bool) -> float | None:
    """`expression_guidance_scale` as a float (or None when not used); a clear error when it cannot act."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"`expression_guidance_scale` must be a finite number >= 0 or None, got {value!r}.")
    if not has_expression:
        raise ValueError(
            "`expression_guidance_scale` was given without an expression input (`expression_image`, "
            "`expression_embeds` or `expression_codes`); it would be ignored."
        )
    if not (isinstance(guidance_scale, (int, float)) and guidance_scale > 1):
        raise ValueError(
            "`expression_guidance_scale` needs classifier-free guidance (`guidance_scale` > 1, and a "
            f"UNet without guidance embedding); got guidance_scale={guidance_scale!r}."
        )
    return float(value)


def _widen(x: Any, n: int) -> Any:
    """[u, c] (2n rows) -> [u, c, c] (3n rows) for every batch tensor in nested args; anything else unchanged."""
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x[n:]]) if x.ndim > 0 and x.shape[0] == 2 * n else x
    if type(x) in (list, tuple):
        return type(x)(_widen(v, n) for v in x)
    if type(x) is dict:
        return {k: _widen(v, n) for k, v in x.items()}
    return x


def _fold(pred: torch.Tensor, ratio: float) -> torch.Tensor:
    """(3n, ...) [eps_u, eps_c, eps_x] -> (2n, ...) [eps_u, eps_x + ratio * (eps_c - eps_x)]."""
    uncond, full, no_expression = pred.chunk(3)
    return torch.cat([uncond, no_expression + ratio * (full - no_expression)])


def attach_expression_guidance(
    unet: torch.nn.Module, rows: int, guidance_scale: float, expression_guidance_scale: float
) -> list:
    """Hooks on `unet` for a call whose guided batch has 2 * `rows` rows; returns the handles (remove them after)."""
    ratio = expression_guidance_scale / guidance_scale

    def widen_inputs(module, args, kwargs):
        return _widen(args, rows), _widen(kwargs, rows)

    def fold_output(module, args, kwargs, output):
        if isinstance(output, tuple):
            return (_fold(output[0], ratio), *output[1:])
        output.sample = _fold(output.sample, ratio)
        return output

    return [
        unet.register_forward_pre_hook(widen_inputs, with_kwargs=True),
        unet.register_forward_hook(fold_output, with_kwargs=True),
    ]
