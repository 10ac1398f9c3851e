"""EmojiDiffPipeline: StableDiffusionXLPipeline + the E-Adapter (identity reference + RGB expression template)."""

import difflib
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .adapter import EmojiDiffAdapter
from .attention import CONDITIONING_KWARG, EmojiDiffConditioning, install_processors, uninstall_processors
from .layers import expand_layer_values, unet_layers

logger = logging.getLogger(__name__)

ImageLike = PIL.Image.Image | np.ndarray


# arguments of diffusers' img2img / inpaint / ControlNet SDXL pipelines, which this text-to-image pipeline would ignore
_INIT_IMAGE_ARGS = ("image", "init_image", "mask_image", "masked_image_latents", "strength", "denoising_start")
_CONTROLNET_ARGS = ("control_image", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end",
                    "guess_mode")  # fmt: skip
_DEPRECATED_PARENT_ARGS = ("callback", "callback_steps")  # the parent pops these from its **kwargs


def _check_call_kwargs(pipeline_cls: type, kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments no `__call__` of `pipeline_cls` or its parents names (the parent's ``**kwargs`` would
    swallow a typo silently), with the closest valid name."""
    valid = list(_DEPRECATED_PARENT_ARGS)
    for cls in pipeline_cls.__mro__:
        if "__call__" in vars(cls) and issubclass(cls, StableDiffusionXLPipeline):
            for name, param in inspect.signature(cls.__call__).parameters.items():
                if name != "self" and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL) and name not in valid:
                    valid.append(name)
    for name in kwargs:
        if name in valid:
            continue
        if name in _INIT_IMAGE_ARGS:
            raise TypeError(
                f"{pipeline_cls.__name__} is text-to-image and takes no init image or inpainting input (`{name}`). "
                "Give the expression template as `expression_image` and the reference face as `identity_image`."
            )
        if name in _CONTROLNET_ARGS:
            raise TypeError(f"{pipeline_cls.__name__} has no ControlNet, so it takes no `{name}`.")
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else f" Valid names: {sorted(valid)}."
        raise TypeError(f"{pipeline_cls.__name__}.__call__() got an unexpected keyword argument `{name}`.{hint}")


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray)) or (isinstance(x, torch.Tensor) and x.ndim == 3)


class EmojiDiffPipeline(StableDiffusionXLPipeline):
    r"""SDXL text-to-image with identity from a reference face and expression copied from an RGB template.

    Components beyond [`StableDiffusionXLPipeline`]'s: `emoji_adapter` ([`EmojiDiffAdapter`]), plus the parent's
    optional `image_encoder` (a CLIP vision model) and `feature_extractor` (its `CLIPImageProcessor`), which encode
    the expression template. All three are optional, so the class also loads plain SDXL folders. A face analyzer
    (:class:`emojidiff_pipeline.face.FaceAnalyzer`, insightface-based, not a torch module and not saved) is set with
    :meth:`set_face_analyzer`; without it `identity_image` is refused and `expression_image` is taken as an
    already aligned face crop.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->emoji_adapter->unet->vae"
    _optional_components = StableDiffusionXLPipeline._optional_components + ["emoji_adapter"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        image_encoder: CLIPVisionModelWithProjection = None,
        feature_extractor: CLIPImageProcessor = None,
        emoji_adapter: EmojiDiffAdapter | None = None,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self.register_modules(emoji_adapter=None)
        self.face_analyzer = None
        self.expression_encoder = None
        if emoji_adapter is not None:
            self.set_emoji_adapter(emoji_adapter)

    # ------------------------------------------------------------------ set-up
    def set_emoji_adapter(self, emoji_adapter: "EmojiDiffAdapter") -> None:
        """Attach `emoji_adapter` (checked against this UNet, moved to its device and dtype, as diffusers' loaders
        do) and install its attention processors."""
        if not isinstance(emoji_adapter, EmojiDiffAdapter):
            raise TypeError(f"`emoji_adapter` must be an EmojiDiffAdapter, got {type(emoji_adapter).__name__}.")
        emoji_adapter.check_unet(self.unet)
        if not any(p.is_meta for m in (self.unet, emoji_adapter) for p in m.parameters()):
            torch.nn.Module.to(emoji_adapter, device=self.unet.device, dtype=self.unet.dtype)  # ModelMixin.to warns
        self.register_modules(emoji_adapter=emoji_adapter)
        install_processors(self.unet, set(emoji_adapter.identity_layer_names) | set(emoji_adapter.expression_layer_names))

    def unload_emoji_adapter(self) -> None:
        """Detach the adapter and restore plain attention processors on the UNet."""
        uninstall_processors(self.unet)
        self.register_modules(emoji_adapter=None)

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
    def encode_identity(self, identity_image, batch_size: int) -> torch.Tensor:
        """Face images -> normed embeddings (B, n_ref, D) with the face analyzer.

        `identity_image`: one image (all prompts), a list of images (several references of one person, all
        prompts), or a list of `batch_size` lists (per-prompt references).
        """
        if self.face_analyzer is None:
            raise ValueError(
                "`identity_image` needs a face analyzer to compute identity embeddings, and none is set. Either "
                "call `pipe.set_face_analyzer(FaceAnalyzer(name='antelopev2', root='~/.insightface'))` (from "
                "emojidiff_pipeline.face), or pass `identity_embeds=` a tensor (batch, n_ref, 512) of normed "
                "face-recognition embeddings."
            )
        if _is_image(identity_image):
            per_prompt = [[identity_image]]
        elif isinstance(identity_image, (list, tuple)) and identity_image and all(map(_is_image, identity_image)):
            per_prompt = [list(identity_image)]
        elif (
            isinstance(identity_image, (list, tuple))
            and identity_image
            and all(isinstance(x, (list, tuple)) and x and all(map(_is_image, x)) for x in identity_image)
        ):
            per_prompt = [list(x) for x in identity_image]
            if len(per_prompt) != batch_size:
                raise ValueError(
                    f"`identity_image` holds {len(per_prompt)} per-prompt reference lists but the batch has "
                    f"{batch_size} prompts."
                )
            if len({len(x) for x in per_prompt}) != 1:
                raise ValueError(
                    f"`identity_image` per-prompt lists must hold the same number of references, got "
                    f"{[len(x) for x in per_prompt]}."
                )
        else:
            raise ValueError(
                "`identity_image` must be an image (PIL or HxWx3 array), a list of images of one person, or a list of "
                f"per-prompt image lists; got {type(identity_image).__name__}."
            )
        embeds = [
            [self.face_analyzer.identity_embedding(img, input_name=f"identity_image[{i}][{j}]") for j, img in enumerate(refs)]
            for i, refs in enumerate(per_prompt)
        ]
        return torch.as_tensor(np.asarray(embeds, dtype=np.float32))  # (B or 1, n_ref, D)

    @staticmethod
    def _template_list(expression_image, batch_size: int) -> list:
        """`expression_image` -> a list of one template, or one per prompt."""
        if _is_image(expression_image):
            templates = [expression_image]
        elif isinstance(expression_image, (list, tuple)) and expression_image and all(map(_is_image, expression_image)):
            templates = list(expression_image)
            if len(templates) not in (1, batch_size):
                raise ValueError(
                    f"`expression_image` holds {len(templates)} templates but the batch has {batch_size} prompts; "
                    "give one template, or one per prompt."
                )
        else:
            raise ValueError(
                "`expression_image` must be an image (PIL or HxWx3 array) or a list of one per prompt; got "
                f"{type(expression_image).__name__}."
            )
        for i, img in enumerate(templates):
            size = img.size if isinstance(img, PIL.Image.Image) else tuple(img.shape[:2])
            if 0 in size:
                name = f"expression_image[{i}]" if len(templates) > 1 else "expression_image"
                raise ValueError(f"`{name}` is empty (size {size}); give an image with a face.")
        return templates

    def _template_crops(self, expression_image, batch_size: int) -> list[PIL.Image.Image]:
        """Expression template(s) -> face crops for the image encoder: aligned and masked with a face analyzer,
        taken as they are (already aligned) without one. One crop, or one per prompt."""
        templates = self._template_list(expression_image, batch_size)
        crops = []
        for i, img in enumerate(templates):
            name = f"expression_image[{i}]" if len(templates) > 1 else "expression_image"
            if self.face_analyzer is not None:
                from .face import masked_template  # grey outside the face region

                geometry = self.emoji_adapter.config.template_crop if self.emoji_adapter is not None else "arcface"
                img = masked_template(*self.face_analyzer.expression_crop(img, input_name=name, geometry=geometry))
            crops.append(self._to_pil(img, name))
        return crops

    @staticmethod
    def _to_pil(img, name: str) -> PIL.Image.Image:
        if isinstance(img, PIL.Image.Image):
            return img.convert("RGB")
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else img
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"`{name}` must be RGB uint8 HxWx3, got shape {arr.shape} dtype {arr.dtype}.")
        return PIL.Image.fromarray(arr)

    def encode_template_crops(self, crops: Sequence[PIL.Image.Image], device=None) -> torch.Tensor:
        """Aligned (and masked) template crops -> image-encoder patch tokens (N, P, E), penultimate hidden states.

        Shared by the pipeline call and the training scripts, so both feed the encoder the same input."""
        if self.image_encoder is None or self.feature_extractor is None:
            raise ValueError(
                "`expression_image` needs the pipeline's `image_encoder` and `feature_extractor`, which are not set; "
                "load a pipeline folder that has them or pass them to `EmojiDiffPipeline.from_pipe(...)`."
            )
        device = device or self._execution_device
        pixels = self.feature_extractor(images=list(crops), return_tensors="pt").pixel_values
        pixels = pixels.to(device=device, dtype=self.image_encoder.dtype)
        return self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]

    def encode_expression(self, expression_image, batch_size: int, device=None) -> torch.Tensor:
        """Expression template(s) -> image-encoder patch tokens (B or 1, P, E)."""
        if self.image_encoder is None or self.feature_extractor is None:
            self.encode_template_crops([], device)  # raises the explanation
        return self.encode_template_crops(self._template_crops(expression_image, batch_size), device)

    def encode_expression_codes(self, expression_image, batch_size: int) -> torch.Tensor:
        """Expression template(s) -> expression-encoder codes (B or 1, K), for the code stream.

        The face analyzer, when set, finds each template's keypoints; without one the encoder gets None and must
        find the face itself."""
        if self.expression_encoder is None:
            raise ValueError(
                f"This adapter's expression branch has a code stream (trained with the expression encoder "
                f"{self.emoji_adapter.config.expression_encoder!r}), so `expression_image` needs that encoder: call "
                "`pipe.set_expression_encoder(...)` (see emojidiff_pipeline.expression), or pass `expression_codes=`."
            )
        from .expression import check_adapter_encoder

        check_adapter_encoder(self.emoji_adapter.config, self.expression_encoder, "pipe.expression_encoder")
        templates = self._template_list(expression_image, batch_size)
        images, keypoints = [], []
        for i, img in enumerate(templates):
            name = f"expression_image[{i}]" if len(templates) > 1 else "expression_image"
            images.append(np.asarray(self._to_pil(img, name)))
            if self.face_analyzer is not None:
                keypoints.append(self.face_analyzer.select(self.face_analyzer.detect(images[-1], name), name).kps)
            else:
                keypoints.append(None)
        return torch.as_tensor(self.expression_encoder(images, keypoints), dtype=torch.float32)  # (B or 1, K)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_embeds(
        name: str, embeds, width: int, batch_size: int, width_arg: str, nonzero: bool = False
    ) -> None:
        """Shape, dtype and value checks of a precomputed embedding input; `nonzero`: refuse zero-norm vectors."""
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(embeds).__name__}.")
        if not embeds.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {embeds.dtype}.")
        if embeds.ndim != 3:
            raise ValueError(f"`{name}` must have 3 dims (batch, tokens, {width}), got shape {tuple(embeds.shape)}.")
        if embeds.shape[-1] != width:
            raise ValueError(
                f"`{name}` has width {embeds.shape[-1]} but the adapter expects {width} ({width_arg}); got shape "
                f"{tuple(embeds.shape)}."
            )
        if embeds.shape[0] not in (1, batch_size):
            raise ValueError(
                f"`{name}` has batch {embeds.shape[0]} but the batch has {batch_size} prompts; give 1 or {batch_size}."
            )
        if embeds.numel() == 0:
            raise ValueError(f"`{name}` is empty: got shape {tuple(embeds.shape)}; give at least one token per row.")
        finite = torch.isfinite(embeds).all(dim=-1)  # (B, tokens)
        if not finite.all():
            b, t = (int(i) for i in (~finite).nonzero()[0])
            raise ValueError(f"`{name}` holds NaN or inf values (first at [{b}, {t}]); got shape {tuple(embeds.shape)}.")
        if nonzero:
            zero = embeds.abs().amax(dim=-1) == 0  # (B, tokens)
            if zero.any():
                b, t = (int(i) for i in zero.nonzero()[0])
                raise ValueError(
                    f"`{name}`[{b}, {t}] is a zero vector, which has no direction (embeddings are normalised); "
                    f"got shape {tuple(embeds.shape)}."
                )

    @staticmethod
    def _batch_size(prompt, prompt_embeds) -> int:
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("`prompt` is an empty list; give at least one prompt.")
            return len(prompt)
        if prompt_embeds is not None:
            return prompt_embeds.shape[0]
        raise ValueError(f"Provide either `prompt` (str or list) or `prompt_embeds`; got prompt={prompt!r}.")

    # ------------------------------------------------------------------ conditioning
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
    ) -> EmojiDiffConditioning:
        """Run the adapter once and cache every adapted layer's key/values for the whole denoising loop.

        Batch layout matches the UNet's: prompt-major, `num_images_per_prompt` consecutive images per prompt, and
        under guidance [negative half (null tokens for both branches), positive half].
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
            return torch.cat([x, x]) if do_classifier_free_guidance else x

        keep = torch.ones(n, dtype=torch.bool, device=device)
        if do_classifier_free_guidance:
            keep = torch.cat([torch.zeros_like(keep), keep])
        output = adapter(
            identity_embeds=expand(identity_embeds),
            expression_image_embeds=expand(expression_image_embeds),
            identity_keep=keep,
            expression_keep=keep,
            expression_codes=expand(expression_codes),
        )
        if expression_mask is not None:
            expression_mask = expand(expression_mask)
        # the UNet's dtype, whatever `.to()` calls left the adapter in
        return EmojiDiffConditioning.build(output, layers, id_scales, exp_scales, expression_mask, dtype=self.unet.dtype)

    def _prepare_mask(self, expression_mask, height: int, width: int) -> torch.Tensor:
        """User mask (PIL / HxW array / tensor, 1 = face region of the output) -> (1, 1, h, w) at latent size."""
        if isinstance(expression_mask, PIL.Image.Image):
            expression_mask = np.asarray(expression_mask.convert("L"), dtype=np.float32) / 255.0
        elif isinstance(expression_mask, torch.Tensor):
            expression_mask = expression_mask.detach().float().cpu().numpy()
        elif not isinstance(expression_mask, np.ndarray):
            raise ValueError(
                "`expression_mask` must be a PIL image, an (H, W) numpy array or a torch.Tensor, got "
                f"{type(expression_mask).__name__}" + (" (open the file first)." if isinstance(expression_mask, str) else ".")
            )
        if not (np.issubdtype(expression_mask.dtype, np.floating) or np.issubdtype(expression_mask.dtype, np.integer)
                or expression_mask.dtype == np.bool_):  # fmt: skip
            raise ValueError(f"`expression_mask` must hold numbers, got dtype {expression_mask.dtype}.")
        mask = torch.as_tensor(np.asarray(expression_mask, dtype=np.float32))
        if mask.ndim != 2:
            raise ValueError(f"`expression_mask` must be a 2-D (H, W) mask, got shape {tuple(mask.shape)}.")
        if mask.numel() == 0:
            raise ValueError(f"`expression_mask` is empty: got shape {tuple(mask.shape)}.")
        if not torch.isfinite(mask).all():
            raise ValueError(f"`expression_mask` holds NaN or inf values ({int((~torch.isfinite(mask)).sum())} of them).")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"`expression_mask` values must lie in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}].")
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        return F.interpolate(mask[None, None], size=(h, w), mode="area")

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        *,
        identity_image: ImageLike | Sequence[ImageLike] | Sequence[Sequence[ImageLike]] | None = None,
        identity_embeds: torch.Tensor | None = None,
        expression_image: ImageLike | Sequence[ImageLike] | None = None,
        expression_embeds: torch.Tensor | None = None,
        expression_codes: torch.Tensor | None = None,
        identity_scale: float | Mapping[str, Any] = 1.0,
        expression_scale: float | Mapping[str, Any] = 1.0,
        expression_mask=None,
        num_images_per_prompt: int | None = 1,
        guidance_scale: float = 5.0,
        height: int | None = None,
        width: int | None = None,
        prompt_embeds: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ):
        r"""Generate portraits. Arguments not listed here are [`StableDiffusionXLPipeline.__call__`]'s.

        Args:
            identity_image: reference face(s): one image, a list (several photos of one person), or one list per
                prompt. Needs a face analyzer. Mutually exclusive with `identity_embeds`.
            identity_embeds (`torch.Tensor` (B or 1, n_ref, 512)): normed face-recognition embeddings.
            expression_image: RGB expression template, or one per prompt. With a face analyzer it is aligned and
                masked to the face region; without, it must already be an aligned face crop.
            expression_embeds (`torch.Tensor` (B or 1, P, E)): precomputed image-encoder patch tokens of templates
                (penultimate hidden states), instead of `expression_image` (image stream).
            expression_codes (`torch.Tensor` (B or 1, K)): precomputed expression-encoder codes of templates, instead
                of `expression_image` (code stream; see :meth:`set_expression_encoder`).
            identity_scale / expression_scale: float >= 0 or a per-block dict like diffusers'
                `set_ip_adapter_scale` (`{"up": {"block_0": [0.0, 1.0, 0.0]}}`). 0 turns a branch off.
            expression_mask: optional (H, W) mask in [0, 1] over the output image; expression attention acts only
                where it is 1.

        Examples:
            >>> pipe = EmojiDiffPipeline.from_pretrained("path/to/emojidiff-sdxl")  # doctest: +SKIP
            >>> image = pipe("a portrait, watercolor", identity_embeds=emb, expression_image=tpl).images[0]  # doctest: +SKIP
        """
        _check_call_kwargs(type(self), kwargs)
        kwargs = dict(
            kwargs,
            prompt=prompt,
            prompt_2=prompt_2,
            num_images_per_prompt=num_images_per_prompt,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            prompt_embeds=prompt_embeds,
        )
        has_identity = identity_image is not None or identity_embeds is not None
        has_expression = expression_image is not None or expression_embeds is not None or expression_codes is not None
        if self.emoji_adapter is None:
            if has_identity or has_expression:
                raise ValueError(
                    "This pipeline has no `emoji_adapter`; identity and expression inputs need one. Load it with "
                    "`pipe.set_emoji_adapter(EmojiDiffAdapter.from_pretrained(...))`."
                )
            return super().__call__(cross_attention_kwargs=cross_attention_kwargs, **kwargs)

        # 1. Check our inputs (the parent checks its own)
        if identity_image is not None and identity_embeds is not None:
            raise ValueError("Pass either `identity_image` or `identity_embeds`, not both.")
        if expression_image is not None and (expression_embeds is not None or expression_codes is not None):
            raise ValueError("Pass either `expression_image` or precomputed `expression_embeds`/`expression_codes`.")
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be a positive int, got {num_images_per_prompt!r}.")
        if cross_attention_kwargs is not None and CONDITIONING_KWARG in cross_attention_kwargs:
            raise ValueError(f"`cross_attention_kwargs` must not hold the reserved key {CONDITIONING_KWARG!r}.")
        batch_size = self._batch_size(prompt, prompt_embeds)
        config = self.emoji_adapter.config
        device = self._execution_device

        # 2. Encode identity and expression once per call
        if identity_image is not None:
            identity_embeds = self.encode_identity(identity_image, batch_size)
        if identity_embeds is not None:
            self._check_embeds("identity_embeds", identity_embeds, config.identity_embed_dim, batch_size,
                               "identity_embed_dim", nonzero=True)  # fmt: skip
        adapter = self.emoji_adapter
        if expression_image is not None and adapter.uses_image_stream:
            expression_embeds = self.encode_expression(expression_image, batch_size, device)
        if expression_image is not None and adapter.uses_code_stream:
            expression_codes = self.encode_expression_codes(expression_image, batch_size)
        if expression_embeds is not None and not adapter.uses_image_stream:
            raise ValueError("`expression_embeds` (image-encoder tokens) was given, but this adapter's expression "
                             f"branch uses only the {config.expression_streams!r} stream.")  # fmt: skip
        if expression_codes is not None and not adapter.uses_code_stream:
            raise ValueError("`expression_codes` was given, but this adapter's expression branch has no code stream.")
        if has_expression and adapter.uses_image_stream and expression_embeds is None:
            raise ValueError("This adapter's expression branch has an image stream: pass `expression_image` or "
                             "`expression_embeds`.")  # fmt: skip
        if has_expression and adapter.uses_code_stream and expression_codes is None:
            raise ValueError("This adapter's expression branch has a code stream: pass `expression_image` (with an "
                             "expression encoder set) or `expression_codes`.")  # fmt: skip
        if expression_embeds is not None:
            self._check_embeds("expression_embeds", expression_embeds, config.image_embed_dim, batch_size, "image_embed_dim")
        if expression_codes is not None:
            if not isinstance(expression_codes, torch.Tensor) or expression_codes.ndim != 2:
                raise ValueError(f"`expression_codes` must be a 2-D tensor (batch, {config.expression_code_dim}), got "
                                 f"{getattr(expression_codes, 'shape', type(expression_codes).__name__)}.")  # fmt: skip
            self._check_embeds("expression_codes", expression_codes[:, None], config.expression_code_dim, batch_size,
                               "expression_code_dim")  # fmt: skip
        mask = None
        if expression_mask is not None and not has_expression:
            raise ValueError("`expression_mask` was given without an expression input (`expression_image`, "
                             "`expression_embeds` or `expression_codes`); it would be ignored.")  # fmt: skip
        if expression_mask is not None:
            h = height or self.default_sample_size * self.vae_scale_factor
            w = width or self.default_sample_size * self.vae_scale_factor
            mask = self._prepare_mask(expression_mask, h, w)

        # 3. Adapter key/values for every adapted layer, cached for all steps
        do_cfg = guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None
        conditioning = self.prepare_conditioning(
            batch_size, num_images_per_prompt, do_cfg, identity_embeds, expression_embeds,
            identity_scale, expression_scale, mask, device, expression_codes,
        )  # fmt: skip

        # 4. Denoise with the parent's loop
        cross_attention_kwargs = {**(cross_attention_kwargs or {}), CONDITIONING_KWARG: conditioning}
        return super().__call__(cross_attention_kwargs=cross_attention_kwargs, **kwargs)
