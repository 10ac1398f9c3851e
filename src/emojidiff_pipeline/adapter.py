"""EmojiDiffAdapter: the E-Adapter (identity projection, expression resampler, per-layer decoupled key/values)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks it up in this module)

from .layers import LayerSpec, select_layers, unet_layers


def _module_key(layer_name: str) -> str:
    """Processor name -> ModuleDict key (ModuleDict keys cannot contain '.'); reversible since names hold no '__'."""
    return layer_name.replace(".", "__")


class IdentityProjection(nn.Module):
    """Normed face embedding(s) -> identity tokens: (B, n_ref, D) -> (B, N, C).

    Several references of one person are averaged and renormalised before projection (order-invariant).
    """

    def __init__(self, embed_dim: int, cross_attention_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.cross_attention_dim = cross_attention_dim
        self.proj = nn.Sequential(
            nn.Linear(embed_dim, embed_dim * 2), nn.GELU(), nn.Linear(embed_dim * 2, cross_attention_dim * num_tokens)
        )
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        x = F.normalize(F.normalize(embeds, dim=-1).mean(dim=1), dim=-1)  # (B, D)
        x = self.proj(x).view(x.shape[0], self.num_tokens, self.cross_attention_dim)  # (B, N, C)
        return self.norm(x)


class PerceiverAttention(nn.Module):
    """Latents attend to [patch tokens; latents] (Flamingo / IP-Adapter-Plus resampler block)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_media = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        media, latents = self.norm_media(media), self.norm_latents(latents)
        b, n, d = latents.shape
        q = self.to_q(latents).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, d/h)
        k, v = self.to_kv(torch.cat([media, latents], dim=1)).chunk(2, dim=-1)
        k = k.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # (B, h, P+N, d/h)
        v = v.view(b, -1, self.heads, d // self.heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d/h)
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class ExpressionResampler(nn.Module):
    """Image-encoder patch tokens -> expression tokens: (B, P, E) -> (B, N, C). A perceiver resampler."""

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, num_tokens: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_tokens, dim) / math.sqrt(dim))
        self.proj_in = nn.Linear(image_embed_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(dim, heads),
                    nn.Sequential(
                        nn.LayerNorm(dim), nn.Linear(dim, dim * 4, bias=False), nn.GELU(), nn.Linear(dim * 4, dim, bias=False)
                    ),
                ]
            )
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, cross_attention_dim)
        self.norm_out = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        media = self.proj_in(image_embeds)  # (B, P, dim)
        latents = self.latents.expand(media.shape[0], -1, -1)  # (B, N, dim)
        for attn, ff in self.layers:
            latents = latents + attn(media, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))  # (B, N, C)


@dataclass
class AdapterOutput:
    """Per-call adapter output. Tokens are (B, N, C); key/values are (B, N, hidden_size) per processor name."""

    identity_tokens: torch.Tensor | None
    expression_tokens: torch.Tensor | None
    identity_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]
    expression_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]


class EmojiDiffAdapter(ModelMixin, ConfigMixin):
    r"""The E-Adapter of EmojiDiff: decoupled identity and expression cross-attention for a frozen UNet.

    Args:
        cross_attention_dim (`int`): width of the UNet's text tokens (2048 for SDXL); the adapter tokens share it.
        identity_layers (`dict[str, int]`): processor name -> hidden size of each layer with an identity branch.
        expression_layers (`dict[str, int]`): processor name -> hidden size of each layer with an expression branch.
        identity_embed_dim (`int`, defaults to 512): width of the normed face-recognition embedding.
        num_identity_tokens (`int`, defaults to 4): identity tokens per image.
        image_embed_dim (`int`, defaults to 1280): width of the image encoder's patch tokens (its hidden size).
        num_expression_tokens (`int`, defaults to 16): expression tokens per template.
        resampler_dim (`int`, defaults to 768), resampler_depth (`int`, defaults to 4),
        resampler_heads (`int`, defaults to 12): the expression resampler's width, depth and heads.

    Null tokens (learned, zero at init, so an untrained adapter contributes exactly nothing through them) stand in
    for a dropped branch in training and for the negative half of classifier-free guidance.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        cross_attention_dim: int,
        identity_layers: dict[str, int],
        expression_layers: dict[str, int],
        identity_embed_dim: int = 512,
        num_identity_tokens: int = 4,
        image_embed_dim: int = 1280,
        num_expression_tokens: int = 16,
        resampler_dim: int = 768,
        resampler_depth: int = 4,
        resampler_heads: int = 12,
    ):
        super().__init__()
        for arg, value in (
            ("cross_attention_dim", cross_attention_dim),
            ("identity_embed_dim", identity_embed_dim),
            ("num_identity_tokens", num_identity_tokens),
            ("image_embed_dim", image_embed_dim),
            ("num_expression_tokens", num_expression_tokens),
            ("resampler_dim", resampler_dim),
            ("resampler_depth", resampler_depth),
            ("resampler_heads", resampler_heads),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive int, got {value!r}.")
        if resampler_dim % resampler_heads:
            raise ValueError(f"`resampler_dim` ({resampler_dim}) must be divisible by `resampler_heads` ({resampler_heads}).")
        for arg, layers in (("identity_layers", identity_layers), ("expression_layers", expression_layers)):
            if not isinstance(layers, dict) or not all(isinstance(v, int) and v > 0 for v in layers.values()):
                raise ValueError(f"`{arg}` must map processor names to hidden sizes, got {layers!r}.")
        if not identity_layers and not expression_layers:
            raise ValueError("`identity_layers` and `expression_layers` are both empty: the adapter would do nothing.")

        self.identity_proj = IdentityProjection(identity_embed_dim, cross_attention_dim, num_identity_tokens)
        self.expression_resampler = ExpressionResampler(
            image_embed_dim, cross_attention_dim, num_expression_tokens, resampler_dim, resampler_depth, resampler_heads
        )
        self.identity_null_tokens = nn.Parameter(torch.zeros(num_identity_tokens, cross_attention_dim))
        self.expression_null_tokens = nn.Parameter(torch.zeros(num_expression_tokens, cross_attention_dim))

        def kv(layers):
            return nn.ModuleDict(
                {
                    _module_key(name): nn.ModuleDict(
                        {
                            "to_k": nn.Linear(cross_attention_dim, size, bias=False),
                            "to_v": nn.Linear(cross_attention_dim, size, bias=False),
                        }
                    )
                    for name, size in layers.items()
                }
            )

        self.identity_kv = kv(identity_layers)
        self.expression_kv = kv(expression_layers)

    @classmethod
    def from_unet(
        cls,
        unet: nn.Module,
        identity_layers: LayerSpec = "all",
        expression_layers: LayerSpec = "expression_sensitive",
        **kwargs,
    ) -> "EmojiDiffAdapter":
        """Build an adapter for `unet`, with new key/values initialised from the frozen `to_k` / `to_v` weights.

        `identity_layers` / `expression_layers` take any spec of :func:`emojidiff_pipeline.layers.select_layers`.
        Other keyword arguments go to the constructor. Works on a UNet built under ``init_empty_weights`` (the
        adapter is then on the meta device too).
        """
        layers = unet_layers(unet)
        cross_dims = {info.cross_attention_dim for info in layers.values() if info.is_cross_attention}
        cross_attention_dim = kwargs.pop("cross_attention_dim", None) or max(cross_dims)
        adapter = cls(
            cross_attention_dim=cross_attention_dim,
            identity_layers=select_layers(layers, identity_layers, arg_name="identity_layers"),
            expression_layers=select_layers(layers, expression_layers, arg_name="expression_layers"),
            **kwargs,
        )
        adapter.check_unet(unet)
        is_meta = any(p.is_meta for p in unet.parameters())
        if not is_meta:
            with torch.no_grad():
                for branch in (adapter.identity_kv, adapter.expression_kv):
                    for key, module in branch.items():
                        attn = unet.get_submodule(key.replace("__", ".")[: -len(".processor")])
                        module["to_k"].weight.copy_(attn.to_k.weight)
                        module["to_v"].weight.copy_(attn.to_v.weight)
            nn.Module.to(adapter, device=unet.device, dtype=unet.dtype)  # ModelMixin.to warns on any dtype
        return adapter

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "EmojiDiffAdapter":
        """Load from a local folder or Hub id (``subfolder=`` works); safetensors only, never pickle."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("`use_safetensors=False` is not supported: EmojiDiff adapters load from safetensors only.")
        kwargs["use_safetensors"] = True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load an EmojiDiffAdapter from `pretrained_model_name_or_path`="
                f"{str(pretrained_model_name_or_path)!r}"
                + (f" (subfolder {kwargs['subfolder']!r})" if kwargs.get("subfolder") else "")
                + f": {err} The folder needs config.json and diffusion_pytorch_model.safetensors; a file that "
                "cannot be read is corrupt or truncated."
            ) from err

    @property
    def identity_layer_names(self) -> list[str]:
        return list(self.config.identity_layers)

    @property
    def expression_layer_names(self) -> list[str]:
        return list(self.config.expression_layers)

    def check_unet(self, unet: nn.Module) -> None:
        """Raise ``ValueError`` naming the first layer of this adapter that `unet` lacks or has at another size."""
        layers = unet_layers(unet)
        for branch, names in (("identity", self.config.identity_layers), ("expression", self.config.expression_layers)):
            for name, size in names.items():
                info = layers.get(name)
                if info is None:
                    raise ValueError(
                        f"This adapter was built for another UNet: its {branch} layer {name!r} does not exist in the "
                        f"given `unet` ({len(layers)} attention layers, e.g. {next(iter(layers), None)!r})."
                    )
                if not info.is_cross_attention:
                    raise ValueError(f"This adapter's {branch} layer {name!r} is a self-attention layer in `unet`.")
                if info.hidden_size != size or info.cross_attention_dim != self.config.cross_attention_dim:
                    raise ValueError(
                        f"This adapter was built for another UNet: {branch} layer {name!r} has hidden size {size} and "
                        f"cross-attention dim {self.config.cross_attention_dim} in the adapter, but "
                        f"{info.hidden_size} and {info.cross_attention_dim} in the given `unet`."
                    )

    def _branch_tokens(self, tokens: torch.Tensor, null: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Swap in the null tokens where `keep` (B,) is False: (B, N, C) -> (B, N, C)."""
        if keep is None:
            return tokens
        keep = keep.to(device=tokens.device, dtype=torch.bool).view(-1, 1, 1)
        return torch.where(keep, tokens, null.to(tokens.dtype).unsqueeze(0))

    def forward(
        self,
        identity_embeds: torch.Tensor | None = None,
        expression_image_embeds: torch.Tensor | None = None,
        identity_keep: torch.Tensor | None = None,
        expression_keep: torch.Tensor | None = None,
    ) -> AdapterOutput:
        """Encode both branches and compute every adapted layer's key/values, once per pipeline call.

        Args:
            identity_embeds: (B, n_ref, identity_embed_dim) face embeddings, or None to skip the identity branch.
            expression_image_embeds: (B, P, image_embed_dim) image-encoder patch tokens of the expression template,
                or None to skip the expression branch.
            identity_keep / expression_keep: (B,) bool; False rows use the null tokens (branch dropout in training,
                the negative half of classifier-free guidance at inference).
        Returns:
            AdapterOutput with tokens (B, N, C) and key/values (B, N, hidden_size) for each configured layer.
        """
        identity_tokens = expression_tokens = None
        identity_kv, expression_kv = {}, {}
        if identity_embeds is not None:
            identity_tokens = self._branch_tokens(
                self.identity_proj(identity_embeds), self.identity_null_tokens, identity_keep
            )
            identity_kv = {
                key.replace("__", "."): (m["to_k"](identity_tokens), m["to_v"](identity_tokens))
                for key, m in self.identity_kv.items()
            }
        if expression_image_embeds is not None:
            expression_tokens = self._branch_tokens(
                self.expression_resampler(expression_image_embeds), self.expression_null_tokens, expression_keep
            )
            expression_kv = {
                key.replace("__", "."): (m["to_k"](expression_tokens), m["to_v"](expression_tokens))
                for key, m in self.expression_kv.items()
            }
        return AdapterOutput(identity_tokens, expression_tokens, identity_kv, expression_kv)
