"""Attention processors: decoupled identity / expression attention for adapted layers, a passthrough elsewhere.

Adapter tokens do not change across denoising steps, so their per-layer keys/values are computed once per call
(:meth:`EmojiDiffConditioning.build`) and reach the processors through ``cross_attention_kwargs["emojidiff"]``, an
explicit channel: they are never concatenated onto the text tokens. Per step, an adapted layer adds one small
matmul against the cached keys (identity and expression segments side by side), a softmax per segment and one
matmul with the cached values, reusing the text branch's query:

    out = softmax(q k_txt^T) v_txt + s_id softmax(q k_id^T) v_id + s_exp m softmax(q k_exp^T) v_exp

where m is the optional face-region mask over query positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from .layers import LayerInfo

CONDITIONING_KWARG = "emojidiff"


@dataclass
class LayerCache:
    """Cached adapter keys/values of one layer: (B, heads, n_id + n_exp, head_dim) each."""

    key: torch.Tensor
    value: torch.Tensor
    num_identity_tokens: int  # first segment; the rest is expression
    identity_scale: float
    expression_scale: float


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
    ) -> "EmojiDiffConditioning":
        """Concatenate each layer's identity and expression key/values, dropping branches whose scale is 0.

        Args:
            adapter_output: :class:`~emojidiff_pipeline.adapter.AdapterOutput` (key/values (B, N, hidden)).
            layer_infos: processor name -> :class:`LayerInfo` (heads).
            identity_scale / expression_scale: processor name -> scale for that layer.
            expression_mask: optional (B, 1, h, w) mask at latent resolution, 1 where expression attention applies.
        """
        caches = {}
        names = list(adapter_output.identity_kv) + [
            n for n in adapter_output.expression_kv if n not in adapter_output.identity_kv
        ]
        for name in names:
            keys, values, n_id = [], [], 0
            s_id, s_exp = identity_scale.get(name, 0.0), expression_scale.get(name, 0.0)
            if name in adapter_output.identity_kv and s_id != 0.0:
                k, v = adapter_output.identity_kv[name]
                keys.append(k), values.append(v)
                n_id = k.shape[1]
            if name in adapter_output.expression_kv and s_exp != 0.0:
                k, v = adapter_output.expression_kv[name]
                keys.append(k), values.append(v)
            if not keys:
                continue
            heads = layer_infos[name].heads
            key, value = torch.cat(keys, dim=1), torch.cat(values, dim=1)  # (B, n, hidden)
            b, n, hidden = key.shape
            caches[name] = LayerCache(
                key=key.view(b, n, heads, hidden // heads).transpose(1, 2),  # (B, heads, n, head_dim)
                value=value.view(b, n, heads, hidden // heads).transpose(1, 2),
                num_identity_tokens=n_id,
                identity_scale=float(s_id),
                expression_scale=float(s_exp),
            )
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
        if cache is not None:
            if cache.key.shape[0] != batch_size:
                raise ValueError(
                    f"EmojiDiff conditioning has batch {cache.key.shape[0]} but layer {self.layer_name!r} runs with "
                    f"batch {batch_size}; build it for the UNet's batch (doubled under classifier-free guidance)."
                )
            hidden_states = hidden_states + self._adapter_attention(query, cache, attn.scale, emojidiff)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _adapter_attention(
        query: torch.Tensor, cache: LayerCache, scale: float, conditioning: EmojiDiffConditioning
    ) -> torch.Tensor:
        """Both adapter branches in one pass: (B, heads, L, d) -> (B, heads, L, d)."""
        n_id = cache.num_identity_tokens
        scores = torch.matmul(query, cache.key.transpose(-1, -2)) * scale  # (B, heads, L, n_id + n_exp)
        n = scores.shape[-1]
        if n_id == n:  # identity only
            probs = scores.softmax(dim=-1) * cache.identity_scale
        else:
            exp_probs = scores[..., n_id:].softmax(dim=-1) * cache.expression_scale
            if conditioning.expression_mask is not None:
                exp_probs = exp_probs * conditioning.mask_for(query.shape[2]).to(exp_probs.dtype)
            if n_id:
                probs = torch.cat([scores[..., :n_id].softmax(dim=-1) * cache.identity_scale, exp_probs], dim=-1)
            else:
                probs = exp_probs
        return torch.matmul(probs, cache.value)  # (B, heads, L, head_dim)


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
