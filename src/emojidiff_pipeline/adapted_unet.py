"""A UNet driven by an EmojiDiff adapter outside the pipeline: training, ANI calibration, probes and diagnosis.

The pipeline runs the adapter once per call and keeps its key/values for the whole denoising loop
(:meth:`~emojidiff_pipeline.mixin.EmojiDiffMixin.prepare_conditioning`); training and the probes instead run it
for every batch, with per-row keep masks (branch dropout, null tokens). :class:`AdaptedUNet` is that one path:
processors installed once, adapter inputs -> :class:`~emojidiff_pipeline.attention.EmojiDiffConditioning` ->
the UNet's prediction, with SDXL's added conditioning (pooled text and time ids) when the UNet takes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .attention import CONDITIONING_KWARG, EmojiDiffConditioning, install_processors
from .layers import expand_layer_values, unet_layers

if TYPE_CHECKING:
    from .adapter import AdapterOutput


def adapted_unet_forward(
    unet,
    noisy: torch.Tensor,
    timesteps: torch.Tensor,
    text: torch.Tensor,
    pooled: torch.Tensor | None,
    time_ids: torch.Tensor | None,
    conditioning: EmojiDiffConditioning,
) -> torch.Tensor:
    """The UNet's prediction (B, C, h, w) for `noisy` (B, C, h, w) at `timesteps` (B,) with text tokens (B, L, D);
    SDXL's `pooled` (B, D2) and `time_ids` (1 or B, 6) go in as added conditioning (None for an SD1.5 UNet)."""
    added = None
    if pooled is not None:
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(noisy.shape[0], -1)}
    return unet(
        noisy, timesteps, text, added_cond_kwargs=added, cross_attention_kwargs={CONDITIONING_KWARG: conditioning}
    ).sample


class AdaptedUNet:
    """`unet` with `adapter`'s processors installed and its branch scales (floats or per-block dicts) expanded.

    ``conditioning(...)`` runs the adapter on a batch; calling the object runs the UNet with it. `model` in
    ``conditioning`` is the module to run instead of the adapter itself (e.g. the adapter wrapped by accelerate for
    distributed training, so its gradients synchronise)."""

    def __init__(self, unet, adapter, identity_scale: Any = 1.0, expression_scale: Any = 1.0):
        adapter.check_unet(unet)
        install_processors(unet, set(adapter.identity_layer_names) | set(adapter.expression_layer_names))
        self.unet, self.adapter = unet, adapter
        self.layers = unet_layers(unet)
        self.identity_scale = expand_layer_values(
            self.layers, adapter.identity_layer_names, identity_scale, "identity_scale"
        )
        self.expression_scale = expand_layer_values(
            self.layers, adapter.expression_layer_names, expression_scale, "expression_scale"
        )

    def conditioning(
        self,
        identity_embeds: torch.Tensor,
        expression_image_embeds: torch.Tensor | None = None,
        expression_codes: torch.Tensor | None = None,
        identity_keep: torch.Tensor | None = None,
        expression_keep: torch.Tensor | None = None,
        model=None,
        return_adapter_output: bool = False,
    ) -> EmojiDiffConditioning | tuple[EmojiDiffConditioning, AdapterOutput]:
        """Per-layer key/values for a batch: identity (B, n_ref, D), template tokens (B, P, E) and/or codes (B, K),
        keep masks (B,) bool (False: that row's branch gets its null tokens). With `return_adapter_output`, also the
        adapter's :class:`~.adapter.AdapterOutput` (tokens, the code head's prediction)."""
        out = (model or self.adapter)(
            identity_embeds=identity_embeds,
            expression_image_embeds=expression_image_embeds,
            expression_codes=expression_codes,
            identity_keep=identity_keep,
            expression_keep=expression_keep,
        )
        conditioning = EmojiDiffConditioning.build(out, self.layers, self.identity_scale, self.expression_scale)
        return (conditioning, out) if return_adapter_output else conditioning

    def __call__(self, noisy, timesteps, text, pooled, time_ids, conditioning: EmojiDiffConditioning) -> torch.Tensor:
        """See :func:`adapted_unet_forward`."""
        return adapted_unet_forward(self.unet, noisy, timesteps, text, pooled, time_ids, conditioning)
