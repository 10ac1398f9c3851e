"""EmojiDiffAdapter: the E-Adapter (identity projection, expression resampler and code projection from
:mod:`.tokens`, per-layer decoupled key/values, gates, loading checks)."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' loader looks it up in this module)

from .layers import LayerSpec, select_layers, unet_layers
from .tokens import RESAMPLER_QUERIES, ExpressionCodeProjection, ExpressionResampler, IdentityProjection
from .weight_checks import HUB_KWARGS, check_tensor_shapes, refuse_missing_local_folder, safetensors_shapes


def _module_key(layer_name: str) -> str:
    """Processor name -> ModuleDict key (ModuleDict keys cannot contain '.'); reversible since names hold no '__'."""
    return layer_name.replace(".", "__")


EXPRESSION_STREAMS = ("image", "code", "both")


@dataclass
class AdapterOutput:
    """Per-call adapter output. Tokens are (B, N, C); key/values are (B, N, hidden_size) per processor name."""

    identity_tokens: torch.Tensor | None
    expression_tokens: torch.Tensor | None
    identity_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]
    expression_kv: dict[str, tuple[torch.Tensor, torch.Tensor]]
    # (B, expression_code_dim): the code head's reading of the image stream's tokens (before branch dropout), when
    # the adapter has `expression_code_head` and was given image tokens; else None
    expression_code_prediction: torch.Tensor | None = None


class EmojiDiffAdapter(ModelMixin, ConfigMixin):
    r"""The E-Adapter of EmojiDiff: decoupled identity and expression cross-attention for a frozen UNet.

    Args:
        cross_attention_dim (`int`): width of the UNet's text tokens (2048 for SDXL); the adapter tokens share it.
        identity_layers (`dict[str, int]`): processor name -> hidden size of each layer with an identity branch.
        expression_layers (`dict[str, int]`): processor name -> hidden size of each layer with an expression branch.
        identity_embed_dim (`int`, defaults to 512): width of the normed face-recognition embedding.
        identity_encoder (`str`, *optional*): name of the face recognizer the identity branch was trained with
            (`FaceAnalyzer.recognizer_name`, e.g. `"insightface:glintr100"` or
            `"dlib_face_recognition_resnet_model_v1"`); the pipeline refuses a recognizer of another name or width.
            None (older adapters): width only.
        num_identity_tokens (`int`, defaults to 4): identity tokens per image.
        image_embed_dim (`int`, defaults to 1280): width of the image encoder's patch tokens (its hidden size).
        num_expression_tokens (`int`, defaults to 16): expression tokens per template.
        resampler_dim (`int`, defaults to 768), resampler_depth (`int`, defaults to 4),
        resampler_heads (`int`, defaults to 12): the expression resampler's width, depth and heads.
        expression_streams (`str`, defaults to `"image"`): how the template reaches the expression branch, one of
            `EXPRESSION_STREAMS`: `"image"` (image-encoder patch tokens through the resampler, the paper's),
            `"code"` (an expression encoder's code vector projected to tokens) or `"both"` (tokens concatenated).
        expression_code_dim (`int`, *optional*): width of the expression code; required with a code stream.
        expression_encoder (`str`, *optional*): name of the expression encoder the code stream was trained with;
            the pipeline refuses an encoder of another name.
        num_expression_code_tokens (`int`, defaults to 4): tokens the code stream adds.
        zero_init_gates (`bool`, defaults to `False`): give every adapted layer a learned per-branch gate on its
            values, zero at init (ReZero), so an untrained adapter reproduces the base exactly and training never
            has to un-learn a random perturbation. `from_unet` turns it on.
        resampler_queries (`str`, defaults to `"learned"`): how the resampler's latent queries start,
            `"learned"` (random, IP-Adapter-Plus: a near mean-pool at init) or `"grid"` (each the mean of its own
            region of the patch grid: position-preserving tokens); see :class:`~.tokens.ExpressionResampler`.
        resampler_bottleneck (`int`, *optional*): the width the image stream's tokens pass through before their
            output projection (None: none).
        expression_code_head (`bool`, defaults to `False`): a linear head reading the expression code of
            `expression_encoder` (width `expression_code_dim`) back from the image stream's tokens, trained by an
            auxiliary loss (`Stage1Config.expression_code_loss_weight`) that keeps the stream predictive of the
            expression. Training only: inference never needs the encoder for an image-stream adapter.
        template_crop (`str`, defaults to `"arcface"`): geometry of the template crop the image stream sees, one of
            `emojidiff_pipeline.face.EXPRESSION_CROPS`; `from_unet` uses `"eyes_nose"` (aligned on expression-invariant
            points, brows and chin kept). The pipeline and training crop templates with the adapter's geometry.

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
        expression_streams: str = "image",
        expression_code_dim: int | None = None,
        expression_encoder: str | None = None,
        num_expression_code_tokens: int = 4,
        zero_init_gates: bool = False,
        template_crop: str = "arcface",
        identity_encoder: str | None = None,
        resampler_queries: str = "learned",
        resampler_bottleneck: int | None = None,
        expression_code_head: bool = False,
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
            ("num_expression_code_tokens", num_expression_code_tokens),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{arg}` must be a positive int, got {value!r}.")
        if expression_streams not in EXPRESSION_STREAMS:
            raise ValueError(f"`expression_streams` must be one of {EXPRESSION_STREAMS}, got {expression_streams!r}.")
        if expression_code_head and expression_streams == "code":
            raise ValueError(
                "`expression_code_head` reads the code back from the image stream's tokens; "
                f"`expression_streams`={expression_streams!r} has no image stream."
            )
        if resampler_queries not in RESAMPLER_QUERIES:
            raise ValueError(f"`resampler_queries` must be one of {RESAMPLER_QUERIES}, got {resampler_queries!r}.")
        if resampler_bottleneck is not None and (
            isinstance(resampler_bottleneck, bool)
            or not isinstance(resampler_bottleneck, int)
            or resampler_bottleneck <= 0
        ):
            raise ValueError(f"`resampler_bottleneck` must be a positive int or None, got {resampler_bottleneck!r}.")
        if expression_streams != "image" or expression_code_head:
            if (
                isinstance(expression_code_dim, bool)
                or not isinstance(expression_code_dim, int)
                or expression_code_dim <= 0
            ):
                needs = f"`expression_streams`={expression_streams!r}"
                needs = "`expression_code_head`" if expression_streams == "image" else needs
                raise ValueError(
                    f"{needs} needs `expression_code_dim` (a positive int, the expression encoder's code width), got "
                    f"{expression_code_dim!r}."
                )
        if template_crop not in ("arcface", "eyes_nose"):
            raise ValueError(f"`template_crop` must be 'arcface' or 'eyes_nose', got {template_crop!r}.")
        for arg, value in (("expression_encoder", expression_encoder), ("identity_encoder", identity_encoder)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"`{arg}` must be a name (a non-empty str) or None, got {value!r}.")
        if resampler_dim % resampler_heads:
            raise ValueError(
                f"`resampler_dim` ({resampler_dim}) must be divisible by `resampler_heads` ({resampler_heads})."
            )
        for arg, layers in (("identity_layers", identity_layers), ("expression_layers", expression_layers)):
            if not isinstance(layers, dict) or not all(isinstance(v, int) and v > 0 for v in layers.values()):
                raise ValueError(f"`{arg}` must map processor names to hidden sizes, got {layers!r}.")
        if not identity_layers and not expression_layers:
            raise ValueError("`identity_layers` and `expression_layers` are both empty: the adapter would do nothing.")

        self.identity_proj = IdentityProjection(identity_embed_dim, cross_attention_dim, num_identity_tokens)
        num_exp_tokens = 0
        if expression_streams in ("image", "both"):
            self.expression_resampler = ExpressionResampler(
                image_embed_dim,
                cross_attention_dim,
                num_expression_tokens,
                resampler_dim,
                resampler_depth,
                resampler_heads,
                queries=resampler_queries,
                bottleneck=resampler_bottleneck,
            )
            num_exp_tokens += num_expression_tokens
            if expression_code_head:
                self.expression_code_readout = nn.Linear(
                    num_expression_tokens * cross_attention_dim, expression_code_dim
                )
        if expression_streams in ("code", "both"):
            self.expression_code_proj = ExpressionCodeProjection(
                expression_code_dim, cross_attention_dim, num_expression_code_tokens, identity_embed_dim * 2
            )
            num_exp_tokens += num_expression_code_tokens
        self.identity_null_tokens = nn.Parameter(torch.zeros(num_identity_tokens, cross_attention_dim))
        self.expression_null_tokens = nn.Parameter(torch.zeros(num_exp_tokens, cross_attention_dim))

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
        if zero_init_gates:  # per layer, per branch: values are multiplied by the gate (0 at init)
            self.identity_gates = nn.ParameterDict(
                {_module_key(n): nn.Parameter(torch.zeros(1)) for n in identity_layers}
            )
            self.expression_gates = nn.ParameterDict(
                {_module_key(n): nn.Parameter(torch.zeros(1)) for n in expression_layers}
            )

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
        Other keyword arguments go to the constructor (`zero_init_gates` defaults to True here, so the new adapter
        is an exact no-op until trained). Works on a UNet built under ``init_empty_weights`` (the
        adapter is then on the meta device too).
        """
        layers = unet_layers(unet)
        cross_dims = {info.cross_attention_dim for info in layers.values() if info.is_cross_attention}
        cross_attention_dim = kwargs.pop("cross_attention_dim", None) or max(cross_dims)
        kwargs.setdefault("zero_init_gates", True)
        kwargs.setdefault("template_crop", "eyes_nose")
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
    def from_pretrained(
        cls, pretrained_model_name_or_path, weight_name: str | None = None, **kwargs
    ) -> "EmojiDiffAdapter":
        """Load from a local folder or Hub id (``subfolder=`` works); safetensors only, never pickle.

        `weight_name`: the weights file, when it is not ``diffusion_pytorch_model.safetensors`` (config.json beside
        it).
        """
        if kwargs.get("use_safetensors") is False:
            raise ValueError(
                "`use_safetensors=False` is not supported: EmojiDiff adapters load from safetensors only."
            )
        kwargs["use_safetensors"] = True
        if kwargs.get("subfolder") is None:
            kwargs.pop("subfolder", None)
        where = f"`pretrained_model_name_or_path`={str(pretrained_model_name_or_path)!r}" + (
            f" (subfolder {kwargs['subfolder']!r})" if kwargs.get("subfolder") else ""
        )
        refuse_missing_local_folder(pretrained_model_name_or_path, where)
        local = os.path.join(
            os.path.expanduser(os.fspath(pretrained_model_name_or_path)), kwargs.get("subfolder") or ""
        )
        if os.path.isdir(local) and not os.path.isfile(os.path.join(local, cls.config_name)):
            inner = os.path.join(local, "emoji_adapter", cls.config_name)
            hint = " It is a pipeline folder: pass `subfolder='emoji_adapter'`." if os.path.isfile(inner) else ""
            raise FileNotFoundError(f"{where}: the folder has no {cls.config_name}, so it holds no adapter.{hint}")
        if weight_name is not None and not (isinstance(weight_name, str) and weight_name.endswith(".safetensors")):
            raise ValueError(f"`weight_name` must name a .safetensors file, got {weight_name!r}.")
        try:
            if weight_name is not None:
                return cls._from_weight_file(pretrained_model_name_or_path, weight_name, where, kwargs)
            cls._check_checkpoint(pretrained_model_name_or_path, where, kwargs)
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except OSError as err:
            raise OSError(
                f"Could not load an EmojiDiffAdapter from {where}: {err} The folder needs config.json and "
                "diffusion_pytorch_model.safetensors; a file that cannot be read is corrupt or truncated."
            ) from err

    @classmethod
    def _from_weight_file(cls, pretrained_model_name_or_path, weight_name: str, where: str, kwargs: dict):
        """config.json + the safetensors file `weight_name` -> adapter, every tensor checked by name and shape."""
        from diffusers.utils import _get_model_file
        from safetensors import safe_open
        from safetensors.torch import load_file

        unknown = set(kwargs) - set(HUB_KWARGS) - {"use_safetensors", "torch_dtype"}
        if unknown:
            raise TypeError(
                f"EmojiDiffAdapter.from_pretrained(weight_name=...) got unsupported arguments {sorted(unknown)}."
            )
        hub = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
        config = cls.load_config(pretrained_model_name_or_path, **hub)
        file = _get_model_file(pretrained_model_name_or_path, weights_name=weight_name, **hub)
        try:
            model = cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: its config.json does not describe a valid EmojiDiffAdapter: {err}") from err
        try:
            with safe_open(file, framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # SafetensorError and OSError: the header cannot be read
            raise OSError(f"{file} cannot be read as safetensors ({err}).") from err
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        check_tensor_shapes(expected, found, where, file, "the adapter described by its config.json")
        model.load_state_dict(load_file(file), strict=True)
        if kwargs.get("torch_dtype") is not None:
            nn.Module.to(model, dtype=kwargs["torch_dtype"])
        return model.eval()

    @classmethod
    def _check_checkpoint(cls, pretrained_model_name_or_path, where: str, kwargs: dict) -> None:
        """Refuse a folder whose config.json is not an adapter's, or whose safetensors does not hold exactly the
        tensors (names and shapes) of the adapter that config builds (diffusers would only warn and leave missing
        parameters on the meta device). The adapter is built on the meta device; tensors are read from the header."""
        hub = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
        config = cls.load_config(pretrained_model_name_or_path, **hub)
        required = [
            n
            for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != "self" and p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        absent = [n for n in required if n not in config]
        if absent:
            described = f" (it describes a {config['_class_name']})" if config.get("_class_name") else ""
            raise ValueError(
                f"{where} is not an EmojiDiff adapter folder: its config.json has no {absent}{described}. Pass the "
                "adapter's folder (e.g. `<pipeline>/emoji_adapter` or `<run>/adapter`)."
            )
        try:
            with torch.device("meta"):
                model = cls.from_config(config)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: its config.json does not describe a valid EmojiDiffAdapter: {err}") from err
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        found = safetensors_shapes(pretrained_model_name_or_path, kwargs.get("variant"), hub)
        if found is None:
            return  # no weights file: diffusers' own loader raises the OSError
        files, found = found
        check_tensor_shapes(expected, found, where, files, "the adapter described by its config.json")

    @property
    def identity_layer_names(self) -> list[str]:
        return list(self.config.identity_layers)

    @property
    def expression_layer_names(self) -> list[str]:
        return list(self.config.expression_layers)

    def check_unet(self, unet: nn.Module) -> None:
        """Raise ``ValueError`` naming the first layer of this adapter that `unet` lacks or has at another size."""
        layers = unet_layers(unet)
        for branch, names in (
            ("identity", self.config.identity_layers),
            ("expression", self.config.expression_layers),
        ):
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

    @property
    def uses_image_stream(self) -> bool:
        """Whether the expression branch takes image-encoder patch tokens (`expression_image_embeds`)."""
        return self.config.expression_streams in ("image", "both")

    @property
    def uses_code_stream(self) -> bool:
        """Whether the expression branch takes expression codes (`expression_codes`) from an expression encoder."""
        return self.config.expression_streams in ("code", "both")

    @property
    def trains_on_expression_codes(self) -> bool:
        """Whether training needs the expression encoder's codes of the templates (code stream or code head)."""
        return self.uses_code_stream or self.config.expression_code_head

    def _key_values(self, tokens: torch.Tensor, kv: nn.ModuleDict, gates: nn.ParameterDict | None) -> dict:
        """Tokens (B, N, C) -> {processor name: (key, value)} (B, N, hidden); values times the layer's gate."""
        out = {}
        for key, m in kv.items():
            value = m["to_v"](tokens)
            if gates is not None:
                value = value * gates[key].to(value.dtype)
            out[key.replace("__", ".")] = (m["to_k"](tokens), value)
        return out

    def encode_expression(
        self, expression_image_embeds: torch.Tensor | None, expression_codes: torch.Tensor | None
    ) -> torch.Tensor:
        """The expression branch's tokens (B, N, C) from the streams this adapter uses, concatenated image first.

        Args:
            expression_image_embeds: (B, P, image_embed_dim) patch tokens (image stream).
            expression_codes: (B, expression_code_dim) codes (code stream).
        """
        return torch.cat(self._stream_tokens(expression_image_embeds, expression_codes), dim=1)

    def _stream_tokens(
        self, expression_image_embeds: torch.Tensor | None, expression_codes: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """Each used stream's tokens [(B, N_s, C)], image stream first (see :meth:`encode_expression`)."""
        streams = self.config.expression_streams
        for name, value, used in (
            ("expression_image_embeds", expression_image_embeds, self.uses_image_stream),
            ("expression_codes", expression_codes, self.uses_code_stream),
        ):
            if value is not None and not used:
                raise ValueError(
                    f"`{name}` was given but this adapter's expression branch uses the {streams!r} stream."
                )
        tokens = []
        if self.uses_image_stream:
            if expression_image_embeds is None:
                raise ValueError(
                    f"This adapter's expression branch ({streams!r} streams) needs `expression_image_embeds`."
                )
            tokens.append(self.expression_resampler(expression_image_embeds))
        if self.uses_code_stream:
            if expression_codes is None:
                raise ValueError(
                    f"This adapter's expression branch ({streams!r} streams) needs `expression_codes` from the "
                    f"expression encoder {self.config.expression_encoder!r}."
                )
            if expression_codes.ndim != 2 or expression_codes.shape[-1] != self.config.expression_code_dim:
                raise ValueError(
                    f"`expression_codes` must have shape (batch, {self.config.expression_code_dim}), got "
                    f"{tuple(expression_codes.shape)}."
                )
            tokens.append(self.expression_code_proj(expression_codes.to(self.expression_null_tokens.dtype)))
        if len(tokens) == 2 and tokens[0].shape[0] != tokens[1].shape[0]:
            raise ValueError(
                f"`expression_image_embeds` has batch {tokens[0].shape[0]} but `expression_codes` has batch "
                f"{tokens[1].shape[0]}."
            )
        return tokens

    def forward(
        self,
        identity_embeds: torch.Tensor | None = None,
        expression_image_embeds: torch.Tensor | None = None,
        identity_keep: torch.Tensor | None = None,
        expression_keep: torch.Tensor | None = None,
        expression_codes: torch.Tensor | None = None,
    ) -> AdapterOutput:
        """Encode both branches and compute every adapted layer's key/values, once per pipeline call.

        Args:
            identity_embeds: (B, n_ref, identity_embed_dim) face embeddings, or None to skip the identity branch.
            expression_image_embeds: (B, P, image_embed_dim) image-encoder patch tokens of the expression template
                (image stream).
            expression_codes: (B, expression_code_dim) expression-encoder codes of the template (code stream).
                The expression branch is skipped when neither is given.
            identity_keep / expression_keep: (B,) bool; False rows use the null tokens (branch dropout in training,
                the negative half of classifier-free guidance at inference).
        Returns:
            AdapterOutput with tokens (B, N, C) and key/values (B, N, hidden_size) for each configured layer.
        """
        identity_tokens = expression_tokens = code_prediction = None
        identity_kv, expression_kv = {}, {}
        if identity_embeds is not None:
            identity_tokens = self._branch_tokens(
                self.identity_proj(identity_embeds), self.identity_null_tokens, identity_keep
            )
            identity_kv = self._key_values(identity_tokens, self.identity_kv, getattr(self, "identity_gates", None))
        if expression_image_embeds is not None or expression_codes is not None:
            streams = self._stream_tokens(expression_image_embeds, expression_codes)
            if self.config.expression_code_head:
                code_prediction = self.expression_code_readout(streams[0].flatten(1))  # the image stream's tokens
            expression_tokens = self._branch_tokens(
                torch.cat(streams, dim=1), self.expression_null_tokens, expression_keep
            )
            expression_kv = self._key_values(
                expression_tokens, self.expression_kv, getattr(self, "expression_gates", None)
            )
        return AdapterOutput(identity_tokens, expression_tokens, identity_kv, expression_kv, code_prediction)
