"""Inputs of the instruments: checked uint8 renders, 5-point aligned 112x112 face crops and the normalisation of
insightface's ``ArcFaceONNX`` (``(x - 127.5) / 127.5``, RGB)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FACE_SIZE = 112
STYLE_IMAGE_SIZE = 64
INPUT_MEAN = 127.5  # insightface ArcFaceONNX: (x - 127.5) / 127.5 on RGB
INPUT_STD = 127.5


def _check_image(image: Any, name: str, size: int | None = None) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        got = f"shape {tuple(image.shape)}" if isinstance(image, np.ndarray) else type(image).__qualname__
        raise ValueError(f"`{name}` must be an RGB uint8 array of shape (H, W, 3), but got {got}.")
    if image.dtype != np.uint8:
        raise ValueError(f"`{name}` must have dtype uint8 (RGB in [0, 255]), but got {image.dtype}.")
    if size is not None and image.shape[:2] != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size}, but got {image.shape[0]}x{image.shape[1]}.")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"`{name}` is empty: shape {tuple(image.shape)}.")
    return image


def _check_batch(images: Any, name: str) -> list[np.ndarray]:
    """A (N, H, W, 3) uint8 array or a sequence of (H, W, 3) uint8 arrays -> list of checked arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            raise ValueError(
                f"`{name}` must be a batch (N, H, W, 3); for one image of shape {images.shape} pass `image[None]`."
            )
        if images.ndim != 4:
            raise ValueError(f"`{name}` must be a batch of RGB images (N, H, W, 3), but got shape {images.shape}.")
        images = list(images)
    elif not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise ValueError(
            f"`{name}` must be an array (N, H, W, 3) or a sequence of (H, W, 3) uint8 arrays, but got "
            f"{type(images).__qualname__}."
        )
    return [_check_image(im, f"{name}[{i}]") for i, im in enumerate(images)]


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------------


def normalise(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, (x - 127.5) / 127.5 (ArcFaceONNX's input convention)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return (x - INPUT_MEAN) / INPUT_STD


def align_faces(images: Any, keypoints: Any, size: int = FACE_SIZE) -> np.ndarray:
    """5-point alignment of each image onto the ArcFace template: -> (N, size, size, 3) uint8 RGB.

    images: (N, H, W, 3) uint8 RGB (or a sequence of such images); keypoints: (N, 5, 2) in insightface order, pixel
    coordinates (``RenderResult.keypoints``). Uses ``face.align_face`` (insightface ``norm_crop``), so the crops are
    the ones ``ArcFaceONNX.get`` computes.
    """
    from emojidiff_pipeline.face_geometry import align_face

    images = _check_batch(images, "images")
    kps = np.asarray(keypoints, dtype=np.float32)
    if kps.ndim != 3 or kps.shape[1:] != (5, 2) or kps.shape[0] != len(images):
        raise ValueError(f"`keypoints` must have shape (N, 5, 2) with N = {len(images)} images, but got {kps.shape}.")
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, (image, k) in enumerate(zip(images, kps)):
        out[i] = align_face(image, k, size)
    return out


def preprocess_face(image: np.ndarray, keypoints: Any) -> torch.Tensor:
    """One render + its keypoints -> the identity / expression input (3, 112, 112) float32, RGB, (x - 127.5) / 127.5.

    image: (H, W, 3) uint8 RGB; keypoints: (5, 2), insightface order, pixel coordinates.
    """
    image = _check_image(image, "image")
    kps = np.asarray(keypoints, dtype=np.float32)
    if kps.shape != (5, 2):
        raise ValueError(f"`keypoints` must have shape (5, 2) (insightface order), but got {kps.shape}.")
    return normalise(align_faces(image[None], kps[None]))[0]


def preprocess_faces(images: Any, keypoints: Any) -> torch.Tensor:
    """Batch version of :func:`preprocess_face`: (N, H, W, 3) uint8 + (N, 5, 2) -> (N, 3, 112, 112) float32."""
    return normalise(align_faces(images, keypoints))


def preprocess_style(images: Any) -> torch.Tensor:
    """Full renders -> the style classifier's input (N, 3, 64, 64) float32, (x - 127.5) / 127.5.

    images: (N, 64, 64, 3) uint8 RGB, or a sequence of square (S, S, 3) uint8 images, which are resized to 64x64
    (Pillow box filter: an average over each output pixel's footprint).
    """
    import PIL.Image

    images = _check_batch(images, "images")
    out = np.empty((len(images), STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        if image.shape[0] != image.shape[1]:
            raise ValueError(f"`images[{i}]` must be square (a full portrait), but got shape {image.shape}.")
        if image.shape[0] != STYLE_IMAGE_SIZE:
            image = np.asarray(
                PIL.Image.fromarray(image).resize((STYLE_IMAGE_SIZE, STYLE_IMAGE_SIZE), PIL.Image.Resampling.BOX)
            )
        out[i] = image
    return normalise(out)
