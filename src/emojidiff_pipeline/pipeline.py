"""EmojiDiff pipelines: the diffusers SDXL (text-to-image, img2img, inpainting, ControlNet) and SD1.5 pipelines + the
E-Adapter (identity reference + RGB expression template).

Every EmojiDiff argument and check lives in one mixin, :class:`~.mixin.EmojiDiffMixin` (its input encoders in
:class:`~.inputs.EmojiDiffInputsMixin`, saving in :class:`~.saving.EmojiDiffSavingMixin`); each pipeline class here is
a thin subclass of its diffusers parent that adds the `emoji_adapter` component. Every argument of the parent
reaches the parent unchanged.
"""

from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models import MultiControlNetModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import (
    CLIPImageProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from .adapter import EmojiDiffAdapter

# diffusers' remote-code loader copies only the modules this file imports itself: every module the library's
# pipeline code reaches is imported here (see EmojiDiffSavingMixin._REMOTE_CODE_FILES)
from .attention import CONDITIONING_KWARG  # noqa: F401
from .expression import check_adapter_encoder  # noqa: F401
from .face import FaceAnalyzer  # noqa: F401
from .face_geometry import masked_template  # noqa: F401
from .face_loading import load_onnx  # noqa: F401
from .guidance import attach_expression_guidance  # noqa: F401
from .hooks import load_factory  # noqa: F401
from .inputs import EmojiDiffInputsMixin  # noqa: F401
from .layers import unet_layers  # noqa: F401
from .mixin import EmojiDiffMixin
from .model_card import emojidiff_model_card  # noqa: F401
from .recognizers import check_adapter_recognizer  # noqa: F401
from .saving import EmojiDiffSavingMixin  # noqa: F401
from .tokens import IdentityProjection  # noqa: F401
from .weight_checks import check_tensor_shapes  # noqa: F401

# ---------------------------------------------------------------------------------------------------------------
# The pipelines: a diffusers parent + the mixin + the `emoji_adapter` component
# ---------------------------------------------------------------------------------------------------------------


def _offload_seq(parent_seq: str) -> str:
    """The parent's CPU-offload order with the adapter placed just before the UNet."""
    return parent_seq.replace("unet", "emoji_adapter->unet", 1)


class EmojiDiffPipeline(EmojiDiffMixin, StableDiffusionXLPipeline):
    r"""SDXL text-to-image with identity from a reference face and expression copied from an RGB template: a
    [`StableDiffusionXLPipeline`] with the `emoji_adapter` component and the EmojiDiff arguments of
    :class:`EmojiDiffMixin`."""

    model_cpu_offload_seq = _offload_seq(StableDiffusionXLPipeline.model_cpu_offload_seq)
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
        self._init_emojidiff(emoji_adapter)


class EmojiDiffImg2ImgPipeline(EmojiDiffMixin, StableDiffusionXLImg2ImgPipeline):
    r"""SDXL img2img with EmojiDiff: a [`StableDiffusionXLImg2ImgPipeline`] (`image=`, `strength=`, ...) with the
    `emoji_adapter` component and the EmojiDiff arguments of :class:`EmojiDiffMixin`."""

    model_cpu_offload_seq = _offload_seq(StableDiffusionXLImg2ImgPipeline.model_cpu_offload_seq)
    _optional_components = StableDiffusionXLImg2ImgPipeline._optional_components + ["emoji_adapter"]

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
        requires_aesthetics_score: bool = False,
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
            requires_aesthetics_score=requires_aesthetics_score,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self._init_emojidiff(emoji_adapter)


class EmojiDiffInpaintPipeline(EmojiDiffMixin, StableDiffusionXLInpaintPipeline):
    r"""SDXL inpainting with EmojiDiff: a [`StableDiffusionXLInpaintPipeline`] (`image=`, `mask_image=`, ...) with the
    `emoji_adapter` component and the EmojiDiff arguments of :class:`EmojiDiffMixin`."""

    model_cpu_offload_seq = _offload_seq(StableDiffusionXLInpaintPipeline.model_cpu_offload_seq)
    _optional_components = StableDiffusionXLInpaintPipeline._optional_components + ["emoji_adapter"]

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
        requires_aesthetics_score: bool = False,
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
            requires_aesthetics_score=requires_aesthetics_score,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
        )
        self._init_emojidiff(emoji_adapter)


class EmojiDiffControlNetPipeline(EmojiDiffMixin, StableDiffusionXLControlNetPipeline):
    r"""SDXL ControlNet (one, or several as a list / `MultiControlNetModel`) with EmojiDiff: a
    [`StableDiffusionXLControlNetPipeline`] (`image=` the control image(s), `controlnet_conditioning_scale=`, ...)
    with the `emoji_adapter` component and the EmojiDiff arguments of :class:`EmojiDiffMixin`."""

    model_cpu_offload_seq = _offload_seq(StableDiffusionXLControlNetPipeline.model_cpu_offload_seq)
    _optional_components = StableDiffusionXLControlNetPipeline._optional_components + ["emoji_adapter"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | list[ControlNetModel] | tuple[ControlNetModel] | MultiControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
        emoji_adapter: EmojiDiffAdapter | None = None,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            add_watermarker=add_watermarker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )
        self._init_emojidiff(emoji_adapter)


class EmojiDiffStableDiffusionPipeline(EmojiDiffMixin, StableDiffusionPipeline):
    r"""SD1.5 text-to-image with EmojiDiff: a [`StableDiffusionPipeline`] with the `emoji_adapter` component (an
    adapter built for an SD1.5 UNet, e.g. `EmojiDiffAdapter.from_unet(sd15.unet)`) and the EmojiDiff arguments of
    :class:`EmojiDiffMixin`. Its `feature_extractor` serves both the safety checker and the template encoder."""

    model_cpu_offload_seq = _offload_seq(StableDiffusionPipeline.model_cpu_offload_seq)
    _optional_components = StableDiffusionPipeline._optional_components + ["emoji_adapter"]
    _exclude_from_cpu_offload = StableDiffusionPipeline._exclude_from_cpu_offload

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker,
        feature_extractor: CLIPImageProcessor,
        image_encoder: CLIPVisionModelWithProjection = None,
        emoji_adapter: EmojiDiffAdapter | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        self._init_emojidiff(emoji_adapter)


EMOJIDIFF_PIPELINES = (
    EmojiDiffPipeline,
    EmojiDiffImg2ImgPipeline,
    EmojiDiffInpaintPipeline,
    EmojiDiffControlNetPipeline,
    EmojiDiffStableDiffusionPipeline,
)
