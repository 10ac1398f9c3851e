"""How EmojiDiff's inputs become the adapter's conditioning, for every EmojiDiff pipeline: the face analyzer and
expression encoder they use, reference photos -> identity embeddings, expression templates -> aligned, masked crops ->
image-encoder tokens or expression codes (at known keypoints or detected ones), and the checks of precomputed
embeddings and of the expression mask. :class:`~.mixin.EmojiDiffMixin` inherits it."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

ImageLike = PIL.Image.Image | np.ndarray


def _is_image(x: Any) -> bool:
    return isinstance(x, (PIL.Image.Image, np.ndarray)) or (isinstance(x, torch.Tensor) and x.ndim == 3)


def _is_kps(x: Any) -> bool:
    try:
        return np.asarray(x, dtype=np.float32).shape == (5, 2)
    except (TypeError, ValueError):
        return False


class EmojiDiffInputsMixin:
    """EmojiDiff's input encoders and checks; needs the pipeline's `emoji_adapter`, `unet`, `image_encoder`,
    `feature_extractor`, `face_analyzer` and `expression_encoder` (set by :class:`~.mixin.EmojiDiffMixin`)."""

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
        if self.emoji_adapter is not None:
            from .recognizers import check_adapter_recognizer

            check_adapter_recognizer(
                self.emoji_adapter.config,
                getattr(self.face_analyzer, "recognizer_name", None),
                getattr(self.face_analyzer, "embedding_dim", None),
                "pipe.face_analyzer",
            )
        embeds = [
            [
                self.face_analyzer.identity_embedding(img, input_name=f"identity_image[{i}][{j}]")
                for j, img in enumerate(refs)
            ]
            for i, refs in enumerate(per_prompt)
        ]
        return torch.as_tensor(np.asarray(embeds, dtype=np.float32))  # (B or 1, n_ref, D)

    @staticmethod
    def _template_list(expression_image, batch_size: int) -> list:
        """`expression_image` -> a list of one template, or one per prompt."""
        if _is_image(expression_image):
            templates = [expression_image]
        elif (
            isinstance(expression_image, (list, tuple)) and expression_image and all(map(_is_image, expression_image))
        ):
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

    @staticmethod
    def _kps_list(kps, num_templates: int) -> list:
        """`expression_kps` -> one (5, 2) array (or None) per template: one (5, 2) set for a single template, or a list
        of one per template."""
        from .face_geometry import _check_kps

        if kps is None:
            return [None] * num_templates
        if _is_kps(kps):
            per_template = [kps]
        elif (
            isinstance(kps, (list, tuple, np.ndarray, torch.Tensor))
            and len(kps)
            and all(k is None or _is_kps(k) for k in kps)
        ):
            per_template = list(kps)
        else:
            raise ValueError(
                "`expression_kps` must be 5 landmarks (5, 2) (left eye, right eye, nose, left and right mouth "
                "corners, in pixels of the template) or a list of one per template; got "
                f"{getattr(kps, 'shape', type(kps).__name__)}."
            )
        if len(per_template) != num_templates:
            raise ValueError(
                f"`expression_kps` holds {len(per_template)} landmark sets but there are {num_templates} expression "
                "templates; give one per template."
            )
        name = "expression_kps" if num_templates == 1 else "expression_kps[{}]"
        return [None if k is None else _check_kps(k, name.format(i)) for i, k in enumerate(per_template)]

    def _template_crops(self, expression_image, batch_size: int, kps=None) -> list[PIL.Image.Image]:
        """Expression template(s) -> face crops for the image encoder: aligned at known `kps` or at the face
        analyzer's landmarks and masked to the face region, or taken as they are (already aligned) without either.
        One crop, or one per prompt."""
        from .face_geometry import align_expression_face, expression_mask, masked_template, to_rgb_array

        templates = self._template_list(expression_image, batch_size)
        kps_list = self._kps_list(kps, len(templates))
        geometry = self.emoji_adapter.config.template_crop if self.emoji_adapter is not None else "arcface"
        crops = []
        for i, (img, points) in enumerate(zip(templates, kps_list)):
            name = f"expression_image[{i}]" if len(templates) > 1 else "expression_image"
            if points is not None:  # known landmarks: the analyzer's crop without its detector
                crop = align_expression_face(
                    to_rgb_array(np.asarray(self._to_pil(img, name)), name), points, 224, geometry
                )
                img = masked_template(PIL.Image.fromarray(crop), expression_mask(224, geometry))
            elif self.face_analyzer is not None:
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

    def encode_expression(
        self, expression_image, batch_size: int | None = None, device=None, kps=None
    ) -> torch.Tensor:
        """Expression template(s) -> image-encoder patch tokens (N, P, E): crop (at known `kps`, or the face
        analyzer's), mask, encode: the same input the pipeline call and training feed the adapter.

        Args:
            expression_image: one template or a list of them.
            batch_size: the prompts' batch (a list must then hold 1 or `batch_size` templates); default: any length.
            kps: known 5-point landmarks (5, 2) of the template, or a list of one per template (None entries detect).
        """
        if self.image_encoder is None or self.feature_extractor is None:
            self.encode_template_crops([], device)  # raises the explanation
        if batch_size is None:
            batch_size = len(expression_image) if isinstance(expression_image, (list, tuple)) else 1
        return self.encode_template_crops(self._template_crops(expression_image, batch_size, kps), device)

    def encode_expression_codes(self, expression_image, batch_size: int | None = None, kps=None) -> torch.Tensor:
        """Expression template(s) -> expression-encoder codes (N, K), for the code stream.

        The encoder gets each template's keypoints: the known `kps`, else the face analyzer's when one is set, else
        None (it must then find the face itself)."""
        if self.expression_encoder is None:
            raise ValueError(
                f"This adapter's expression branch has a code stream (trained with the expression encoder "
                f"{self.emoji_adapter.config.expression_encoder!r}), so `expression_image` needs that encoder: call "
                "`pipe.set_expression_encoder(...)` (see emojidiff_pipeline.expression), or pass `expression_codes=`."
            )
        from .expression import check_adapter_encoder

        check_adapter_encoder(self.emoji_adapter.config, self.expression_encoder, "pipe.expression_encoder")
        if batch_size is None:
            batch_size = len(expression_image) if isinstance(expression_image, (list, tuple)) else 1
        templates = self._template_list(expression_image, batch_size)
        images, keypoints = [], []
        for i, (img, points) in enumerate(zip(templates, self._kps_list(kps, len(templates)))):
            name = f"expression_image[{i}]" if len(templates) > 1 else "expression_image"
            images.append(np.asarray(self._to_pil(img, name)))
            if points is None and self.face_analyzer is not None:
                points = self.face_analyzer.select(self.face_analyzer.detect(images[-1], name), name).kps
            keypoints.append(points)
        return torch.as_tensor(self.expression_encoder(images, keypoints), dtype=torch.float32)  # (B or 1, K)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_embeds(name: str, embeds, width: int, batch_size: int, width_arg: str, nonzero: bool = False) -> None:
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
            raise ValueError(
                f"`{name}` holds NaN or inf values (first at [{b}, {t}]); got shape {tuple(embeds.shape)}."
            )
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
    def _prepare_mask(self, expression_mask) -> torch.Tensor:
        """User mask (PIL / HxW array / tensor, 1 = face region of the output) -> (1, 1, H, W) float; it is resized to
        the latent grid (area) when the UNet first runs (:meth:`EmojiDiffConditioning.set_latent_size`)."""
        if isinstance(expression_mask, PIL.Image.Image):
            expression_mask = np.asarray(expression_mask.convert("L"), dtype=np.float32) / 255.0
        elif isinstance(expression_mask, torch.Tensor):
            expression_mask = expression_mask.detach().float().cpu().numpy()
        elif not isinstance(expression_mask, np.ndarray):
            raise ValueError(
                "`expression_mask` must be a PIL image, an (H, W) numpy array or a torch.Tensor, got "
                f"{type(expression_mask).__name__}"
                + (" (open the file first)." if isinstance(expression_mask, str) else ".")
            )
        if not (
            np.issubdtype(expression_mask.dtype, np.floating)
            or np.issubdtype(expression_mask.dtype, np.integer)
            or expression_mask.dtype == np.bool_
        ):
            raise ValueError(f"`expression_mask` must hold numbers, got dtype {expression_mask.dtype}.")
        mask = torch.as_tensor(np.asarray(expression_mask, dtype=np.float32))
        if mask.ndim != 2:
            raise ValueError(f"`expression_mask` must be a 2-D (H, W) mask, got shape {tuple(mask.shape)}.")
        if mask.numel() == 0:
            raise ValueError(f"`expression_mask` is empty: got shape {tuple(mask.shape)}.")
        if not torch.isfinite(mask).all():
            raise ValueError(
                f"`expression_mask` holds NaN or inf values ({int((~torch.isfinite(mask)).sum())} of them)."
            )
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"`expression_mask` values must lie in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}].")
        return mask[None, None]
