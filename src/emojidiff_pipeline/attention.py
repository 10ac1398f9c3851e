"""Attention processors: decoupled identity / expression attention for adapted layers, a passthrough elsewhere.

Adapter tokens do not change across denoising steps, so their per-layer keys/values are computed once per call
(:meth:`EmojiDiffConditioning.build`, branch scales folded into the values) and reach the processors through
``cross_attention_kwargs["emojidiff"]``, an explicit channel: they are never concatenated onto the text tokens.
Per step, an adapted layer adds one fused SDPA call per active branch over a handful of cached tokens, reusing
the text branch's query:

    out = softmax(q k_txt^T) v_txt + s_id softmax(q k_id^T) v_id + s_exp m softmax(q k_exp^T) v_exp

where m is the optional face-region mask over query positions.

diffusers' IP-Adapter works beside it: on a layer that has an ``IPAdapterAttnProcessor2_0`` the EmojiDiff processor
takes over its weights (:class:`EmojiDiffIPAdapterAttnProcessor`, still an ``IPAdapterAttnProcessor2_0`` for
``set_ip_adapter_scale``) and adds the image-prompt terms exactly as diffusers does.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from torch import nn

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
    expression_mask: torch.Tensor | None = None  # (B, 1, h, w) over the output image (any resolution), or None
    latent_size: tuple[int, int] | None = None  # the UNet's sample grid; None: the mask is already at latent size
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

    def set_latent_size(self, latent_size) -> None:
        """Record the UNet's sample grid (h, w) so the mask, given over the output image, is resized to it (area)."""
        latent_size = tuple(int(x) for x in latent_size)
        if latent_size == self.latent_size:
            return
        if self.expression_mask is not None:
            mh, mw = self.expression_mask.shape[-2:]
            h, w = latent_size
            if abs(mh * w - mw * h) > 0.05 * max(mh * w, mw * h):
                raise ValueError(
                    f"`expression_mask` has size {mh}x{mw} (HxW) but the output latents are {h}x{w}: the aspect "
                    "ratios differ, so the mask would be stretched. Give a mask of the output image's aspect ratio."
                )
        self.latent_size = latent_size
        self._mask_cache.clear()

    def mask_for(self, num_queries: int) -> torch.Tensor:
        """Expression mask resized to a layer's query grid: (B, 1, num_queries, 1)."""
        if num_queries not in self._mask_cache:
            mask = self.expression_mask.float()
            if self.latent_size is not None and tuple(mask.shape[-2:]) != self.latent_size:
                mask = F.interpolate(mask, size=self.latent_size, mode="area")  # (B, 1, h, w) over latents
            h, w = mask.shape[-2:]
            for level in range(8):
                f = 2**level
                hh, ww = math.ceil(h / f), math.ceil(w / f)
                if hh * ww == num_queries:
                    break
            else:
                raise ValueError(f"`expression_mask` of size {h}x{w} does not fit a layer with {num_queries} queries.")
            resized = F.interpolate(mask, size=(hh, ww), mode="area") if f > 1 else mask
            self._mask_cache[num_queries] = resized.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, L, 1)
        return self._mask_cache[num_queries]


class EmojiDiffAttnProcessor:
    """SDPA processor for an adapted cross-attention layer: text attention + scaled identity and expression terms.

    With no conditioning passed (or none for this layer) it computes exactly what ``AttnProcessor2_0`` does (and, as
    :class:`EmojiDiffIPAdapterAttnProcessor`, what ``IPAdapterAttnProcessor2_0`` does).
    """

    def __init__(self, layer_name: str):
        if not isinstance(layer_name, str) or not layer_name.endswith(".processor"):
            raise ValueError(f"`layer_name` must be a processor name ending in '.processor', got {layer_name!r}.")
        self.layer_name = layer_name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | tuple | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        emojidiff: EmojiDiffConditioning | None = None,
        ip_adapter_masks: torch.Tensor | list | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        ip_hidden_states = None
        if isinstance(encoder_hidden_states, tuple):  # diffusers' IP-Adapter: (text tokens, [image tokens, ...])
            if not isinstance(self, IPAdapterAttnProcessor2_0):
                raise ValueError(
                    f"Layer {self.layer_name!r} received IP-Adapter image tokens but holds no IP-Adapter weights; "
                    "load the IP-Adapter through the EmojiDiff pipeline (`pipe.load_ip_adapter`) so both branches "
                    "are kept."
                )
            encoder_hidden_states, ip_hidden_states = encoder_hidden_states
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
        if ip_hidden_states is not None:  # (B, L, C), as IPAdapterAttnProcessor2_0 adds it
            hidden_states = hidden_states + self._ip_adapter_terms(attn, query, ip_hidden_states, ip_adapter_masks)
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


class EmojiDiffIPAdapterAttnProcessor(EmojiDiffAttnProcessor, IPAdapterAttnProcessor2_0):
    """:class:`EmojiDiffAttnProcessor` for a layer that also carries diffusers' IP-Adapter: text attention + the
    IP-Adapter's image-prompt terms (its weights and per-layer `scale`, shared with the processor it replaces) + the
    EmojiDiff branches. An ``IPAdapterAttnProcessor2_0``, so ``set_ip_adapter_scale`` and ``unload_ip_adapter`` see it.
    """

    def __init__(self, layer_name: str, ip_processor: IPAdapterAttnProcessor2_0):
        if not isinstance(ip_processor, IPAdapterAttnProcessor2_0):
            raise TypeError(f"`ip_processor` must be an IPAdapterAttnProcessor2_0, got {type(ip_processor).__name__}.")
        nn.Module.__init__(self)
        EmojiDiffAttnProcessor.__init__(self, layer_name)
        self.hidden_size = ip_processor.hidden_size
        self.cross_attention_dim = ip_processor.cross_attention_dim
        self.num_tokens = ip_processor.num_tokens
        self.scale = ip_processor.scale
        self.to_k_ip = ip_processor.to_k_ip  # shared modules: the UNet's IP-Adapter weights, not copies
        self.to_v_ip = ip_processor.to_v_ip

    def to_ip_processor(self) -> IPAdapterAttnProcessor2_0:
        """The plain IP-Adapter processor of this layer (same weight modules and scale), for unloading EmojiDiff."""
        proc = IPAdapterAttnProcessor2_0.__new__(IPAdapterAttnProcessor2_0)
        nn.Module.__init__(proc)
        proc.hidden_size, proc.cross_attention_dim = self.hidden_size, self.cross_attention_dim
        proc.num_tokens, proc.scale = self.num_tokens, self.scale
        proc.to_k_ip, proc.to_v_ip = self.to_k_ip, self.to_v_ip
        return proc

    def _ip_adapter_terms(self, attn: Attention, query: torch.Tensor, ip_hidden_states, ip_adapter_masks):
        """Sum of the IP-Adapter image-prompt attentions, (B, L, C): IPAdapterAttnProcessor2_0's, term by term."""
        batch_size, heads, _, head_dim = query.shape
        if ip_adapter_masks is not None:
            if not isinstance(ip_adapter_masks, list):  # diffusers' legacy form: (num_ip_adapter, 1, H, W)
                ip_adapter_masks = list(ip_adapter_masks.unsqueeze(1))
            if not (len(ip_adapter_masks) == len(self.scale) == len(ip_hidden_states)):
                raise ValueError(
                    f"Length of ip_adapter_masks array ({len(ip_adapter_masks)}) must match length of self.scale "
                    f"array ({len(self.scale)}) and number of ip_hidden_states ({len(ip_hidden_states)})"
                )
            for index, (mask, scale, ip_state) in enumerate(zip(ip_adapter_masks, self.scale, ip_hidden_states)):
                if mask is None:
                    continue
                if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
                    raise ValueError(
                        "Each element of the ip_adapter_masks array should be a tensor with shape "
                        "[1, num_images_for_ip_adapter, height, width]. Please use `IPAdapterMaskProcessor` to "
                        "preprocess your mask"
                    )
                if mask.shape[1] != ip_state.shape[1]:
                    raise ValueError(
                        f"Number of masks ({mask.shape[1]}) does not match number of ip images ({ip_state.shape[1]}) "
                        f"at index {index}"
                    )
                if isinstance(scale, list) and not len(scale) == mask.shape[1]:
                    raise ValueError(
                        f"Number of masks ({mask.shape[1]}) does not match number of scales ({len(scale)}) at index "
                        f"{index}"
                    )
        else:
            ip_adapter_masks = [None] * len(self.scale)

        def attend(tokens, to_k_ip, to_v_ip):  # (B, n, C_cross) -> (B, L, heads * head_dim)
            k = to_k_ip(tokens).view(batch_size, -1, heads, head_dim).transpose(1, 2)
            v = to_v_ip(tokens).view(batch_size, -1, heads, head_dim).transpose(1, 2)
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
            return out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)

        total = 0
        for ip_state, scale, to_k_ip, to_v_ip, mask in zip(
            ip_hidden_states, self.scale, self.to_k_ip, self.to_v_ip, ip_adapter_masks
        ):
            if all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0:
                continue
            if mask is None:
                total = total + scale * attend(ip_state, to_k_ip, to_v_ip)
                continue
            scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
            for i in range(mask.shape[1]):
                out = attend(ip_state[:, i, :, :], to_k_ip, to_v_ip)
                down = IPAdapterMaskProcessor.downsample(mask[:, i, :, :], batch_size, out.shape[1], out.shape[2])
                total = total + scales[i] * (out * down.to(dtype=query.dtype, device=query.device))
        return total


class EmojiDiffPassthroughProcessor(nn.Module):
    """Wraps a layer's existing processor and drops the ``emojidiff`` keyword, so diffusers logs no
    "not expected" warning for layers the adapter does not touch. An ``nn.Module``, so a wrapped processor's weights
    stay in the UNet (moved by ``.to()``); built without arguments (as diffusers' loaders do) it wraps
    ``AttnProcessor2_0``."""

    def __init__(self, inner=None):
        super().__init__()
        self.inner = AttnProcessor2_0() if inner is None else inner
        self._inner_takes_ip_masks = "ip_adapter_masks" in inspect.signature(self.inner.__call__).parameters

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        emojidiff=None,
        ip_adapter_masks=None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if ip_adapter_masks is not None and self._inner_takes_ip_masks:
            kwargs["ip_adapter_masks"] = ip_adapter_masks
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def _unwrap(processor):
    """The processor a layer had before EmojiDiff: passthroughs unwrapped, EmojiDiff processors replaced by plain
    ``AttnProcessor2_0`` (or the IP-Adapter processor they took over)."""
    while isinstance(processor, EmojiDiffPassthroughProcessor):
        processor = processor.inner
    if isinstance(processor, EmojiDiffIPAdapterAttnProcessor):
        return processor.to_ip_processor()
    if isinstance(processor, EmojiDiffAttnProcessor):
        return AttnProcessor2_0()
    return processor


def install_processors(unet, layer_names) -> None:
    """Give every layer in `layer_names` an :class:`EmojiDiffAttnProcessor` and wrap every other layer's processor;
    a layer with diffusers' IP-Adapter gets an :class:`EmojiDiffIPAdapterAttnProcessor` that keeps it.

    Idempotent: calling it again (e.g. for a new adapter) re-targets the layers without nesting wrappers.
    """
    layer_names = set(layer_names)
    processors = {}
    for name, proc in unet.attn_processors.items():
        inner = _unwrap(proc)
        if isinstance(inner, IPAdapterAttnProcessor2_0):
            processors[name] = EmojiDiffIPAdapterAttnProcessor(name, inner)
        elif name in layer_names:
            if "IPAdapter" in type(inner).__name__:
                raise ValueError(
                    f"Layer {name!r} uses {type(inner).__name__}, which EmojiDiff cannot combine with its branches; "
                    "load the IP-Adapter on diffusers' default SDPA processors (`pipe.unload_emoji_adapter()`, "
                    "`pipe.unet.set_default_attn_processor()`, then `load_ip_adapter` and `set_emoji_adapter`), which "
                    "gives IPAdapterAttnProcessor2_0."
                )
            processors[name] = EmojiDiffAttnProcessor(name)
        else:
            processors[name] = EmojiDiffPassthroughProcessor(inner)
    unet.set_attn_processor(processors)


def uninstall_processors(unet) -> None:
    """Restore the processors EmojiDiff replaced: passthroughs unwrapped, adapted layers back to ``AttnProcessor2_0``
    or to the IP-Adapter processor they carried."""
    unet.set_attn_processor({name: _unwrap(proc) for name, proc in unet.attn_processors.items()})
