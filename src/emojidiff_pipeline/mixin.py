"""What EmojiDiff adds to a diffusers pipeline, as one mixin: the `emoji_adapter` component, the identity and
expression conditioning, and `__call__` with the EmojiDiff arguments (its input encoders are
:class:`~.inputs.EmojiDiffInputsMixin`, saving :class:`~.saving.EmojiDiffSavingMixin`). Every argument of the parent
reaches the parent unchanged. The pipeline classes themselves are in :mod:`.pipeline`.
"""

import difflib
import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .adapter import EmojiDiffAdapter
from .attention import CONDITIONING_KWARG, EmojiDiffConditioning, install_processors, uninstall_processors
from .guidance import attach_expression_guidance, check_expression_guidance_scale
from .inputs import EmojiDiffInputsMixin, ImageLike
from .layers import expand_layer_values, unet_layers
from .saving import EmojiDiffSavingMixin

logger = logging.getLogger(__name__)


# arguments of diffusers' img2img / inpaint / ControlNet pipelines, named in the error of a class that lacks them
_INIT_IMAGE_ARGS = ("image", "init_image", "mask_image", "masked_image_latents", "strength", "denoising_start")
_CONTROLNET_ARGS = (
    "control_image",
    "controlnet_conditioning_scale",
    "control_guidance_start",
    "control_guidance_end",
    "guess_mode",
)
_DEPRECATED_PARENT_ARGS = ("callback", "callback_steps")  # the parents pop these from their **kwargs
# the EmojiDiff keyword arguments of `__call__` (the rest go to the diffusers parent)
_EMOJIDIFF_ARGS = (
    "identity_image",
    "identity_embeds",
    "expression_image",
    "expression_kps",
    "expression_embeds",
    "expression_codes",
    "identity_scale",
    "expression_scale",
    "expression_mask",
    "expression_guidance_scale",
)


def _check_call_kwargs(pipeline_cls: type, parent_signature: inspect.Signature, kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments that neither EmojiDiff nor the diffusers parent's `__call__` names (the parent's
    ``**kwargs`` would swallow a typo silently), with the closest valid name."""
    valid = list(_EMOJIDIFF_ARGS) + list(_DEPRECATED_PARENT_ARGS)
    for name, param in parent_signature.parameters.items():
        if param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and name not in valid:
            valid.append(name)
    for name in kwargs:
        if name in valid:
            continue
        if name in _INIT_IMAGE_ARGS:
            raise TypeError(
                f"{pipeline_cls.__name__} is text-to-image and takes no init image or inpainting input (`{name}`). "
                "Give the expression template as `expression_image` and the reference face as `identity_image`; "
                "for img2img or inpainting use EmojiDiffImg2ImgPipeline or EmojiDiffInpaintPipeline."
            )
        if name in _CONTROLNET_ARGS:
            raise TypeError(
                f"{pipeline_cls.__name__} has no ControlNet, so it takes no `{name}`; use EmojiDiffControlNetPipeline."
            )
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else f" Valid names: {sorted(valid)}."
        raise TypeError(f"{pipeline_cls.__name__}.__call__() got an unexpected keyword argument `{name}`.{hint}")


def _is_emojidiff_adapter(x: Any) -> bool:
    """An EmojiDiffAdapter, also one of a copy of this library's code loaded as a diffusers remote-code module
    (`trust_remote_code=True`), whose class is another object than ours."""
    from diffusers import ModelMixin

    return isinstance(x, EmojiDiffAdapter) or (
        isinstance(x, ModelMixin) and type(x).__name__ == "EmojiDiffAdapter" and hasattr(x, "check_unet")
    )


class EmojiDiffMixin(EmojiDiffInputsMixin, EmojiDiffSavingMixin):
    r"""Identity from a reference face and expression copied from an RGB template, for any diffusers SD/SDXL pipeline.

    Mixed in before a diffusers pipeline class (`class P(EmojiDiffMixin, StableDiffusionXLPipeline)`), whose
    `__init__` registers the components and then calls :meth:`_init_emojidiff`. Components beyond the parent's:
    `emoji_adapter` ([`EmojiDiffAdapter`]), plus the parent's optional `image_encoder` (a CLIP vision model) and
    `feature_extractor` (its `CLIPImageProcessor`), which encode the expression template. All three are optional, so
    the classes also load plain SDXL / SD folders. A face analyzer (:class:`emojidiff_pipeline.face.FaceAnalyzer`,
    insightface-based, not a torch module and not saved) is set with :meth:`set_face_analyzer`; without it
    `identity_image` is refused and `expression_image` is taken as an already aligned face crop (or cropped at
    known `expression_kps`).
    """

    def _init_emojidiff(self, emoji_adapter: EmojiDiffAdapter | None) -> None:
        self.register_modules(emoji_adapter=None)
        self.face_analyzer = None
        self.expression_encoder = None
        if emoji_adapter is not None:
            self.set_emoji_adapter(emoji_adapter)

    # ------------------------------------------------------------------ set-up
    def set_emoji_adapter(self, emoji_adapter: "EmojiDiffAdapter", torch_dtype: torch.dtype | None = None) -> None:
        """Attach `emoji_adapter` (checked against this UNet, moved to its device and to `torch_dtype`, by default the
        UNet's dtype, as diffusers' loaders do) and install its attention processors. CPU offload hooks, if enabled,
        are re-applied so the adapter is offloaded like the other components."""
        if not _is_emojidiff_adapter(emoji_adapter):
            raise TypeError(f"`emoji_adapter` must be an EmojiDiffAdapter, got {type(emoji_adapter).__name__}.")
        if torch_dtype is not None and not (isinstance(torch_dtype, torch.dtype) and torch_dtype.is_floating_point):
            raise ValueError(f"`torch_dtype` must be a floating-point torch.dtype or None, got {torch_dtype!r}.")
        emoji_adapter.check_unet(self.unet)
        from diffusers.loaders.lora_base import _func_optionally_disable_offloading

        model_offload, sequential_offload, _ = _func_optionally_disable_offloading(self)
        if not any(p.is_meta for m in (self.unet, emoji_adapter) for p in m.parameters()):
            dtype = torch_dtype or self.unet.dtype
            torch.nn.Module.to(emoji_adapter, device=self.unet.device, dtype=dtype)  # ModelMixin.to warns
        self.register_modules(emoji_adapter=emoji_adapter)
        install_processors(
            self.unet, set(emoji_adapter.identity_layer_names) | set(emoji_adapter.expression_layer_names)
        )
        if model_offload:
            self.enable_model_cpu_offload(device=getattr(self, "_offload_device", None) or "cuda")
        elif sequential_offload:
            self.enable_sequential_cpu_offload(device=getattr(self, "_offload_device", None) or "cuda")

    def load_emoji_adapter(
        self,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        weight_name: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> EmojiDiffAdapter:
        """Load an [`EmojiDiffAdapter`] from a local folder or Hub repo and attach it, like diffusers'
        `load_ip_adapter`.

        Args:
            pretrained_model_name_or_path: adapter folder (config.json + safetensors) or Hub id; for a saved EmojiDiff
                pipeline folder give `subfolder="emoji_adapter"`.
            subfolder: folder inside it that holds the adapter.
            weight_name: safetensors file name, when not `diffusion_pytorch_model.safetensors`.
            torch_dtype: dtype to keep the adapter in; default the UNet's (key/values are cast to the UNet's dtype
                per call either way).
            kwargs: Hub arguments (`revision`, `token`, `cache_dir`, `local_files_only`, ...).
        """
        adapter = EmojiDiffAdapter.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, weight_name=weight_name, **kwargs
        )
        self.set_emoji_adapter(adapter, torch_dtype=torch_dtype)
        return adapter

    def unload_emoji_adapter(self) -> None:
        """Detach the adapter and restore the UNet's processors (plain attention, or diffusers' IP-Adapter's)."""
        uninstall_processors(self.unet)
        self.register_modules(emoji_adapter=None)

    def _check_processors(self) -> None:
        """Raise when the adapter's layers lost their EmojiDiff processors (e.g. `set_attn_processor`, or diffusers'
        `load_ip_adapter` run on another pipeline sharing this UNet): the branches would be silently dropped."""
        from .attention import EmojiDiffAttnProcessor

        processors = self.unet.attn_processors
        lost = sorted(n for n in self._adapted_layers() if not isinstance(processors.get(n), EmojiDiffAttnProcessor))
        if lost:
            raise ValueError(
                f"{len(lost)} of the adapter's layers no longer have EmojiDiff processors (first: {lost[0]!r} has "
                f"{type(processors.get(lost[0])).__name__}): something replaced the UNet's attention processors, e.g. "
                "`set_attn_processor` or a `load_ip_adapter` on another pipeline that shares this UNet. Re-attach "
                "with `pipe.set_emoji_adapter(pipe.emoji_adapter)`."
            )

    def _adapted_layers(self) -> set[str]:
        adapter = self.emoji_adapter
        return set(adapter.identity_layer_names) | set(adapter.expression_layer_names)

    def load_ip_adapter(self, *args, **kwargs):
        """diffusers' `load_ip_adapter`, with the EmojiDiff processors kept: they take over the IP-Adapter branch."""
        if getattr(self, "emoji_adapter", None) is None:
            return super().load_ip_adapter(*args, **kwargs)
        uninstall_processors(self.unet)
        try:
            return super().load_ip_adapter(*args, **kwargs)
        finally:
            install_processors(self.unet, self._adapted_layers())

    def unload_ip_adapter(self):
        """diffusers' `unload_ip_adapter`, leaving EmojiDiff working: its processors are kept, and so are the
        `image_encoder` and `feature_extractor` when the adapter's expression branch reads template images."""
        if getattr(self, "emoji_adapter", None) is None:
            return super().unload_ip_adapter()
        keep = {}
        if self.emoji_adapter.uses_image_stream:
            keep = {"image_encoder": self.image_encoder, "feature_extractor": self.feature_extractor}
        uninstall_processors(self.unet)
        try:
            return super().unload_ip_adapter()
        finally:
            if keep:
                self.register_modules(**keep)
            install_processors(self.unet, self._adapted_layers())

    def set_face_analyzer(self, face_analyzer) -> None:
        """Use `face_analyzer` (needs `identity_embedding(image, input_name)` and `expression_crop(...)`), or None."""
        if face_analyzer is not None and not (
            hasattr(face_analyzer, "identity_embedding") and hasattr(face_analyzer, "expression_crop")
        ):
            raise TypeError(
                "`face_analyzer` must provide `identity_embedding` and `expression_crop` (e.g. "
                f"emojidiff_pipeline.face.FaceAnalyzer), got {type(face_analyzer).__name__}."
            )
        self.face_analyzer = face_analyzer

    def set_expression_encoder(self, expression_encoder) -> None:
        """Use `expression_encoder` (an :class:`~emojidiff_pipeline.expression.ExpressionEncoder`) for the code
        stream of the adapter's expression branch, or None. Not a torch module and not saved, like the face analyzer;
        an encoder other than the one the adapter was trained with is refused at call time."""
        if expression_encoder is not None:
            from .expression import check_expression_encoder

            check_expression_encoder(expression_encoder)
        self.expression_encoder = expression_encoder

    # ------------------------------------------------------------------ encoders

    def prepare_conditioning(
        self,
        batch_size: int,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        identity_embeds: torch.Tensor | None,
        expression_image_embeds: torch.Tensor | None,
        identity_scale,
        expression_scale,
        expression_mask: torch.Tensor | None,
        device,
        expression_codes: torch.Tensor | None = None,
        expression_guidance: bool = False,
    ) -> EmojiDiffConditioning:
        """Run the adapter once and cache every adapted layer's key/values for the whole denoising loop.

        Batch layout matches the UNet's: prompt-major, `num_images_per_prompt` consecutive images per prompt, and
        under guidance [negative half (null tokens for both branches), positive half]; with `expression_guidance`
        (needs guidance) a third part, the positive rows with the expression branch off (see :mod:`.guidance`).
        """
        adapter = self.emoji_adapter
        layers = unet_layers(self.unet)
        id_scales = expand_layer_values(layers, adapter.identity_layer_names, identity_scale, "identity_scale")
        exp_scales = expand_layer_values(layers, adapter.expression_layer_names, expression_scale, "expression_scale")
        n = batch_size * num_images_per_prompt

        def expand(x):  # (1 or B, ...) -> (B * nipp, ...), then doubled for guidance
            if x is None:
                return None
            x = x.to(device=device, dtype=adapter.dtype)
            x = x.expand(batch_size, *x.shape[1:]) if x.shape[0] == 1 else x
            x = x.repeat_interleave(num_images_per_prompt, dim=0)
            return torch.cat([x] * parts) if do_classifier_free_guidance else x

        if expression_guidance and not do_classifier_free_guidance:
            raise ValueError("`expression_guidance` needs classifier-free guidance.")
        parts = 3 if expression_guidance else 2
        ones, zeros = torch.ones(n, dtype=torch.bool, device=device), torch.zeros(n, dtype=torch.bool, device=device)
        identity_keep = expression_keep = ones
        if do_classifier_free_guidance:  # [null, full] or [null, full, expression off]
            identity_keep = torch.cat([zeros, ones, ones][:parts])
            expression_keep = torch.cat([zeros, ones, zeros][:parts])
        output = adapter(
            identity_embeds=expand(identity_embeds),
            expression_image_embeds=expand(expression_image_embeds),
            identity_keep=identity_keep,
            expression_keep=expression_keep,
            expression_codes=expand(expression_codes),
        )
        if expression_mask is not None:
            expression_mask = expand(expression_mask)
        # the UNet's dtype, whatever `.to()` calls left the adapter in
        return EmojiDiffConditioning.build(
            output, layers, id_scales, exp_scales, expression_mask, dtype=self.unet.dtype
        )

    # ------------------------------------------------------------------ call
    def _parent_call_signature(self) -> inspect.Signature:
        """Signature of the diffusers parent's `__call__` (the class after EmojiDiffMixin in the MRO), without self."""
        return inspect.signature(super().__call__)

    @torch.no_grad()
    def __call__(
        self,
        *args,
        identity_image: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        identity_embeds: torch.Tensor | None = None,
        expression_image: ImageLike | Sequence[ImageLike] | None = None,
        expression_kps: np.ndarray | Sequence[np.ndarray] | None = None,
        expression_embeds: torch.Tensor | None = None,
        expression_codes: torch.Tensor | None = None,
        identity_scale: float | Mapping[str, Any] = 1.0,
        expression_scale: float | Mapping[str, Any] = 1.0,
        expression_mask=None,
        expression_guidance_scale: float | None = None,
        **kwargs,
    ):
        r"""Generate portraits. Every argument not listed here is the diffusers parent's (`prompt`, `image`,
        `mask_image`, `control_image`/`image`, `strength`, `negative_prompt`, `ip_adapter_image`, ...) and reaches it
        unchanged; a name neither knows is refused.

        Args:
            identity_image: reference face(s): one image, a list (several photos of one person), or one list per
                prompt. Needs a face analyzer. Mutually exclusive with `identity_embeds`.
            identity_embeds (`torch.Tensor` (B or 1, n_ref, 512)): normed face-recognition embeddings.
            expression_image: RGB expression template, or one per prompt. Cropped at `expression_kps` when given,
                else aligned and masked with the face analyzer; without either it must be an aligned face crop.
            expression_kps: known 5-point landmarks (5, 2) of the template (insightface order, template pixels), or a
                list of one per template; detection is then skipped and no face analyzer is needed.
            expression_embeds (`torch.Tensor` (B or 1, P, E)): precomputed image-encoder patch tokens of templates
                (penultimate hidden states), instead of `expression_image` (image stream).
            expression_codes (`torch.Tensor` (B or 1, K)): precomputed expression-encoder codes of templates, instead
                of `expression_image` (code stream; see :meth:`set_expression_encoder`).
            identity_scale / expression_scale: float >= 0 or a per-block dict like diffusers'
                `set_ip_adapter_scale` (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`). 0 turns a branch off.
            expression_mask: optional (H, W) mask in [0, 1] over the output image (same aspect ratio); expression
                attention acts only where it is 1.
            expression_guidance_scale: a guidance scale of the expression branch's own (needs `guidance_scale` > 1):
                ``eps_u + g (eps_x - eps_u) + g_e (eps_c - eps_x)`` with eps_x the prediction with the expression
                branch off. None (default) or equal to `guidance_scale`: ordinary guidance; larger pushes the
                template's expression harder; one more UNet batch per step (see :mod:`emojidiff_pipeline.guidance`).

        Examples:
            >>> pipe = EmojiDiffPipeline.from_pretrained("path/to/emojidiff-sdxl")  # doctest: +SKIP
            >>> image = pipe(  # doctest: +SKIP
            ...     "a portrait, watercolor", identity_embeds=emb, expression_image=tpl
            ... ).images[0]
        """
        # 1. Bind the parent's arguments; refuse names nobody takes
        signature = self._parent_call_signature()
        _check_call_kwargs(type(self), signature, kwargs)
        try:
            bound = signature.bind_partial(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{type(self).__name__}.__call__(): {err}") from err

        def arg(name):
            if name in bound.arguments:
                return bound.arguments[name]
            param = signature.parameters.get(name)
            return None if param is None or param.default is inspect.Parameter.empty else param.default

        cross_attention_kwargs = arg("cross_attention_kwargs")
        has_identity = identity_image is not None or identity_embeds is not None
        has_expression = expression_image is not None or expression_embeds is not None or expression_codes is not None
        if self.emoji_adapter is None:
            if has_identity or has_expression:
                raise ValueError(
                    "This pipeline has no `emoji_adapter`; identity and expression inputs need one. Load it with "
                    "`pipe.load_emoji_adapter(path_or_repo)` or `pipe.set_emoji_adapter(EmojiDiffAdapter(...))`."
                )
            return super().__call__(*bound.args, **bound.kwargs)

        # 2. Check our inputs (the parent checks its own)
        num_images_per_prompt = arg("num_images_per_prompt")
        if identity_image is not None and identity_embeds is not None:
            raise ValueError("Pass either `identity_image` or `identity_embeds`, not both.")
        if expression_image is not None and (expression_embeds is not None or expression_codes is not None):
            raise ValueError("Pass either `expression_image` or precomputed `expression_embeds`/`expression_codes`.")
        if expression_kps is not None and expression_image is None:
            raise ValueError(
                "`expression_kps` was given without `expression_image`; the landmarks locate the face in "
                "that template."
            )
        if (
            not isinstance(num_images_per_prompt, int)
            or isinstance(num_images_per_prompt, bool)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive int, got {num_images_per_prompt!r}.")
        if cross_attention_kwargs is not None and CONDITIONING_KWARG in cross_attention_kwargs:
            raise ValueError(f"`cross_attention_kwargs` must not hold the reserved key {CONDITIONING_KWARG!r}.")
        batch_size = self._batch_size(arg("prompt"), arg("prompt_embeds"))
        self._check_processors()
        config = self.emoji_adapter.config
        device = self._execution_device

        # 3. Encode identity and expression once per call
        if identity_image is not None:
            identity_embeds = self.encode_identity(identity_image, batch_size)
        if identity_embeds is not None:
            self._check_embeds(
                "identity_embeds",
                identity_embeds,
                config.identity_embed_dim,
                batch_size,
                "identity_embed_dim",
                nonzero=True,
            )
        adapter = self.emoji_adapter
        if expression_image is not None and adapter.uses_image_stream:
            expression_embeds = self.encode_expression(expression_image, batch_size, device, kps=expression_kps)
        if expression_image is not None and adapter.uses_code_stream:
            expression_codes = self.encode_expression_codes(expression_image, batch_size, kps=expression_kps)
        if expression_embeds is not None and not adapter.uses_image_stream:
            raise ValueError(
                "`expression_embeds` (image-encoder tokens) was given, but this adapter's expression "
                f"branch uses only the {config.expression_streams!r} stream."
            )
        if expression_codes is not None and not adapter.uses_code_stream:
            raise ValueError("`expression_codes` was given, but this adapter's expression branch has no code stream.")
        if has_expression and adapter.uses_image_stream and expression_embeds is None:
            raise ValueError(
                "This adapter's expression branch has an image stream: pass `expression_image` or `expression_embeds`."
            )
        if has_expression and adapter.uses_code_stream and expression_codes is None:
            raise ValueError(
                "This adapter's expression branch has a code stream: pass `expression_image` (with an "
                "expression encoder set) or `expression_codes`."
            )
        if expression_embeds is not None:
            self._check_embeds(
                "expression_embeds", expression_embeds, config.image_embed_dim, batch_size, "image_embed_dim"
            )
        if expression_codes is not None:
            if not isinstance(expression_codes, torch.Tensor) or expression_codes.ndim != 2:
                raise ValueError(
                    f"`expression_codes` must be a 2-D tensor (batch, {config.expression_code_dim}), got "
                    f"{getattr(expression_codes, 'shape', type(expression_codes).__name__)}."
                )
            self._check_embeds(
                "expression_codes",
                expression_codes[:, None],
                config.expression_code_dim,
                batch_size,
                "expression_code_dim",
            )
        mask = None
        if expression_mask is not None and not has_expression:
            raise ValueError(
                "`expression_mask` was given without an expression input (`expression_image`, "
                "`expression_embeds` or `expression_codes`); it would be ignored."
            )
        if expression_mask is not None:
            mask = self._prepare_mask(expression_mask)

        # 4. Adapter key/values for every adapted layer, cached for all steps
        do_cfg = arg("guidance_scale") > 1 and self.unet.config.time_cond_proj_dim is None
        expression_guidance_scale = check_expression_guidance_scale(
            expression_guidance_scale, arg("guidance_scale") if do_cfg else None, has_expression
        )
        conditioning = self.prepare_conditioning(
            batch_size,
            num_images_per_prompt,
            do_cfg,
            identity_embeds,
            expression_embeds,
            identity_scale,
            expression_scale,
            mask,
            device,
            expression_codes,
            expression_guidance_scale is not None,
        )

        # 5. Denoise with the parent's loop; a mask learns the latent grid when the UNet first runs
        bound.arguments["cross_attention_kwargs"] = {
            **(cross_attention_kwargs or {}),
            CONDITIONING_KWARG: conditioning,
        }
        hooks = []
        if mask is not None:

            def record_latent_size(module, hook_args, hook_kwargs):
                sample = hook_args[0] if hook_args else hook_kwargs["sample"]
                conditioning.set_latent_size(sample.shape[-2:])

            hooks.append(self.unet.register_forward_pre_hook(record_latent_size, with_kwargs=True))
        if expression_guidance_scale is not None:
            hooks += attach_expression_guidance(
                self.unet, batch_size * num_images_per_prompt, float(arg("guidance_scale")), expression_guidance_scale
            )
        try:
            return super().__call__(*bound.args, **bound.kwargs)
        finally:
            for hook in hooks:
                hook.remove()

    # ------------------------------------------------------------------ saving
