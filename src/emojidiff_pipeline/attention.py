"""Attention processors: decoupled identity / expression attention for adapted layers, a passthrough elsewhere.

Adapter tokens do not change across denoising steps, so their per-layer keys/values are computed once per call
(:meth:`EmojiDiffConditioning.build`, branch scales folded into the values) and reach the processors through
``cross_attention_kwargs["emojidiff"]``, an explicit channel: they are never concatenated onto the text tokens.
Per step, an adapted layer adds one fused SDPA call per active branch over a handful of cached tokens, reusing
the text branch's query:

    out = softmax(q k_txt^T) v_txt + s_id softmax(q k_id^T) v_id + s_exp m softmax(q k_exp^T) v_exp

where m is the optional face-region mask over query positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .layers import LayerInfo

CONDITIONING_KWARG = "emojidiff"


@dataclass
class LayerCache:
    """Cached adapter keys/values of one layer, (B, heads, n, head_dim) each; values are pre-multiplied by the
    branch's scale so the step loop does no scaling. A branch whose scale is 0 is None."""

    identity_key: torch.Tensor | None
    identity_value: torch.Tensor | None
    expression_key: torch.Tensor | None
    expression_value: torch.Tensor | None


@dataclass
class EmojiDiffConditioning:
    """Everything the adapted layers need for one pipeline call (batch already doubled for guidance if used)."""

    layers: dict[str, LayerCache]
    expression_mask: torch.Tensor | None = None  # (B, 1, h, w) over latent positions, or None
    _mask_cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        adapter_output,
        layer_infos: Mapping[str, LayerInfo],
        identity_scale: Mapping[str, float],
        expression_scale: Mapping[str, float],
        expression_mask: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> "EmojiDiffConditioning":
        """Reshape each layer's key/values to heads and fold in the branch scales, dropping branches at scale 0.

        Args:
            adapter_output: :class:`~emojidiff_pipeline.adapter.AdapterOutput` (key/values (B, N, hidden)).
            layer_infos: processor name -> :class:`LayerInfo` (heads).
            identity_scale / expression_scale: processor name -> scale for that layer.
            expression_mask: optional (B, 1, h, w) mask at latent resolution, 1 where expression attention applies.
            dtype: cast the key/values to this dtype (the UNet's), when the adapter runs in another one.
        """

        def heads(name, kv, scale):
            if kv is None or scale == 0.0:
                return None, None
            k, v = kv if dtype is None else (kv[0].to(dtype), kv[1].to(dtype))
            b, n, hidden = k.shape
            h = layer_infos[name].heads
            k = k.view(b, n, h, hidden // h).transpose(1, 2)  # (B, heads, n, head_dim)
            v = (v * scale).view(b, n, h, hidden // h).transpose(1, 2)
            return k, v

        caches = {}
        for name in dict.fromkeys([*adapter_output.identity_kv, *adapter_output.expression_kv]):
            id_k, id_v = heads(name, adapter_output.identity_kv.get(name), identity_scale.get(name, 0.0))
            exp_k, exp_v = heads(name, adapter_output.expression_kv.get(name), expression_scale.get(name, 0.0))
            if id_k is not None or exp_k is not None:
                caches[name] = LayerCache(id_k, id_v, exp_k, exp_v)
        return cls(caches, expression_mask)

    def mask_for(self, num_queries: int) -> torch.Tensor:
        """Expression mask resized to a layer's query grid: (B, 1, num_queries, 1)."""
        if num_queries not in self._mask_cache:
            mask = self.expression_mask
            h, w = mask.shape[-2:]
            for level in range(8):
                f = 2**level
                hh, ww = math.ceil(h / f), math.ceil(w / f)
                if hh * ww == num_queries:
                    break
            else:
                raise ValueError(f"`expression_mask` of size {h}x{w} does not fit a layer with {num_queries} queries.")
            resized = F.interpolate(mask.float(), size=(hh, ww), mode="area") if f > 1 else mask.float()
            self._mask_cache[num_queries] = resized.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, 1)
        return self._mask_cache[num_queries]


class EmojiDiffAttnProcessor:
    """SDPA processor for an adapted cross-attention layer: text attention + scaled identity and expression terms.

    With no conditioning passed (or none for this layer) it computes exactly what ``AttnProcessor2_0`` does.
    """

    def __init__(self, layer_name: str):
        if not isinstance(layer_name, str) or not layer_name.endswith(".processor"):
            raise ValueError(f"`layer_name` must be a processor name ending in '.processor', got {layer_name!r}.")
        self.layer_name = layer_name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        emojidiff: EmojiDiffConditioning | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (B, heads, L, head_dim)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )  # (B, heads, L, head_dim)

        cache = emojidiff.layers.get(self.layer_name) if emojidiff is not None else None
        if cache is not None:  # decoupled branches, reusing the text branch's query; (B, heads, L, head_dim)
            if cache.identity_key is not None:
                hidden_states = hidden_states + F.scaled_dot_product_attention(
                    query, self._batch(cache.identity_key, batch_size), cache.identity_value, scale=attn.scale
                )
            if cache.expression_key is not None:
                expression = F.scaled_dot_product_attention(
                    query, self._batch(cache.expression_key, batch_size), cache.expression_value, scale=attn.scale
                )
                if emojidiff.expression_mask is not None:
                    expression = expression * emojidiff.mask_for(query.shape[2]).to(expression.dtype)
                hidden_states = hidden_states + expression

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _batch(self, key: torch.Tensor, batch_size: int) -> torch.Tensor:
        if key.shape[0] != batch_size:
            raise ValueError(
                f"EmojiDiff conditioning has batch {key.shape[0]} but layer {self.layer_name!r} runs with batch "
                f"{batch_size}; build it for the UNet's batch (doubled under classifier-free guidance)."
            )
        return key


class EmojiDiffPassthroughProcessor:
    """Wraps a layer's existing processor and drops the ``emojidiff`` keyword, so diffusers logs no
    "not expected" warning for layers the adapter does not touch."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, *args, emojidiff=None, **kwargs) -> torch.Tensor:
        return self.inner(attn, hidden_states, *args, **kwargs)


def install_processors(unet, layer_names) -> None:
    """Give every layer in `layer_names` an :class:`EmojiDiffAttnProcessor` and wrap every other layer's processor.

    Idempotent: calling it again (e.g. for a new adapter) re-targets the layers without nesting wrappers.
    """
    layer_names = set(layer_names)
    processors = {}
    for name, proc in unet.attn_processors.items():
        inner = proc
        while isinstance(inner, EmojiDiffPassthroughProcessor):
            inner = inner.inner
        if isinstance(inner, EmojiDiffAttnProcessor):
            inner = AttnProcessor2_0()
        processors[name] = EmojiDiffAttnProcessor(name) if name in layer_names else EmojiDiffPassthroughProcessor(inner)
    unet.set_attn_processor(processors)


def uninstall_processors(unet) -> None:
    """Restore plain processors: unwrap passthroughs, and replace adapted layers with ``AttnProcessor2_0``."""
    processors = {}
    for name, proc in unet.attn_processors.items():
        while isinstance(proc, EmojiDiffPassthroughProcessor):
            proc = proc.inner
        processors[name] = AttnProcessor2_0() if isinstance(proc, EmojiDiffAttnProcessor) else proc
    unet.set_attn_processor(processors)
