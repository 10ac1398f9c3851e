"""Face geometry: RGB checks, the 5-point ArcFace alignment, the face mask, and the expression template's crop
(aligned on expression-invariant points) and mask. numpy and Pillow only (``align_face`` warps with insightface).

Coordinates: keypoints (5, 2) in image pixels, insightface order (left eye, right eye, nose, mouth left, mouth right);
crops are square RGB uint8 arrays [S, S, 3]; masks are float32 [S, S] in [0, 1].
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import PIL.Image

logger = logging.getLogger(__name__)

# Geometries of the expression template crop: "arcface" (the 5-point ArcFace alignment, the first adapters'
# geometry) and "eyes_nose" (aligned on the eyes and nose only, zoomed out so brows, chin and an open jaw fit).
EXPRESSION_CROPS = ("arcface", "eyes_nose")


# ----------------------------------------------------------------------------------------------------------------
# Images, alignment, mask
# ----------------------------------------------------------------------------------------------------------------


def to_rgb_array(image: PIL.Image.Image | np.ndarray, input_name: str) -> np.ndarray:
    """Return `image` as a contiguous RGB array [H, W, 3] uint8.

    Accepts a ``PIL.Image`` (any mode, converted to RGB) or an ``np.ndarray`` [H, W, 3] uint8 RGB. Anything else
    raises a ValueError naming `input_name` and what was received.
    """
    if isinstance(image, PIL.Image.Image):
        if image.mode != "RGB":
            logger.debug("Converting `%s` from PIL mode %s to RGB.", input_name, image.mode)
            image = image.convert("RGB")
        array = np.asarray(image)
    elif isinstance(image, np.ndarray):
        array = image
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(
                f"`{input_name}` must be an RGB image array of shape (H, W, 3), but got an array of shape "
                f"{tuple(array.shape)}."
            )
        if array.dtype != np.uint8:
            raise ValueError(
                f"`{input_name}` must be a uint8 RGB array with values in [0, 255], but got dtype {array.dtype}; "
                "convert it first, e.g. `(x * 255).round().clip(0, 255).astype(np.uint8)` for floats in [0, 1]."
            )
    else:
        raise ValueError(  # noqa: TRY004
            f"`{input_name}` must be a PIL.Image or an np.ndarray of shape (H, W, 3) and dtype uint8 (RGB), but got "
            f"{type(image).__module__}.{type(image).__qualname__}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"`{input_name}` is empty: shape {tuple(array.shape)}.")
    return np.ascontiguousarray(array)


def _check_crop_size(size: Any, name: str = "size") -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"`{name}` must be a positive int, but got {size!r}.")
    if size % 112 != 0 and size % 128 != 0:
        raise ValueError(
            f"`{name}` must be a multiple of 112 or 128 (insightface's alignment templates), e.g. 112 or 224, but "
            f"got {size}."
        )
    return int(size)


def _check_kps(kps: Any, name: str = "kps") -> np.ndarray:
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (5, 2):
        raise ValueError(
            f"`{name}` must be 5 landmarks of shape (5, 2) (left eye, right eye, nose, left and right mouth "
            f"corners), but got shape {kps.shape}."
        )
    if not np.all(np.isfinite(kps)):
        raise ValueError(f"`{name}` contains non-finite values: {kps.tolist()}.")
    if float(np.ptp(kps, axis=0).max()) < 1e-3:
        raise ValueError(f"`{name}` are degenerate (all 5 points coincide): {kps.tolist()}.")
    return kps


def arcface_template(size: int = 112) -> np.ndarray:
    """insightface's 5-point ArcFace template (5, 2) for an aligned crop of `size` (as in ``estimate_norm``)."""
    size = _check_crop_size(size)
    # Same values as insightface.utils.face_align.arcface_dst, kept here so the mask needs no insightface import.
    dst = np.array(
        [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
        dtype=np.float32,
    )
    if size % 112 == 0:
        return dst * (size / 112.0)
    ratio = size / 128.0
    dst = dst * ratio
    dst[:, 0] += 8.0 * ratio
    return dst


def align_face(image_rgb: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """5-point similarity alignment (insightface ``norm_crop``): RGB [H, W, 3] uint8 -> RGB [size, size, 3] uint8.

    `kps` (5, 2) are in image pixel coordinates, insightface order; they land on the ArcFace template of `size`.
    """
    image_rgb = to_rgb_array(image_rgb, "image_rgb")
    kps = _check_kps(kps)
    size = _check_crop_size(size)
    from .face_loading import import_insightface

    import_insightface()
    from insightface.utils import face_align

    return face_align.norm_crop(image_rgb, landmark=kps, image_size=size)  # channel-agnostic warp: RGB stays RGB


def face_mask(size: int) -> np.ndarray:
    """Soft face-region mask [size, size] float32 in [0, 1], in aligned-crop coordinates.

    An ellipse derived from the aligned 5 points (the ArcFace template): it spans about one eye distance either
    side of the face's centre line, from the brows (above the eyes by 0.55x the eye-to-mouth distance) to the chin
    (below the mouth by the same), with a smoothstep edge over the outer 25% of its radius.
    """
    size = _check_crop_size(size)
    dst = arcface_template(size).astype(np.float64)
    eyes, mouth = dst[:2].mean(0), dst[3:].mean(0)
    eye_mouth = mouth[1] - eyes[1]
    top, bottom = eyes[1] - 0.55 * eye_mouth, mouth[1] + 0.55 * eye_mouth
    cx, cy = dst[:, 0].mean(), (top + bottom) / 2
    ax, ay = 1.05 * (dst[1, 0] - dst[0, 0]), (bottom - top) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = np.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)  # 1 on the ellipse
    edge = 0.25
    t = np.clip((1.0 - radius) / edge, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _check_geometry(geometry: Any) -> str:
    if geometry not in EXPRESSION_CROPS:
        raise ValueError(f"`geometry` must be one of {EXPRESSION_CROPS}, got {geometry!r}.")
    return geometry


def expression_template(size: int) -> np.ndarray:
    """Where the eyes and the nose tip land in an ``"eyes_nose"`` expression crop of `size`: (3, 2) pixels.

    The ArcFace template's eyes and nose, scaled by 0.75 and moved up (eye midpoint at 38 % of the height), so
    raised brows and the chin of a fully open jaw stay inside the crop and its :func:`expression_mask`.
    """
    size = _check_crop_size(size)
    dst = arcface_template(112).astype(np.float64)[:3]
    eyes = dst[:2].mean(0)
    out = (dst - eyes) * 0.75 + np.array([56.0, 43.0])
    return (out * (size / 112.0)).astype(np.float32)


def _similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) mapping points `src` (N, 2) onto `dst` (N, 2) (Umeyama 1991, no reflection)."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    var = float((s**2).sum())
    a = float((s * d).sum()) / var  # scale * cos
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / var  # scale * sin
    rot = np.array([[a, -b], [b, a]])
    return np.concatenate([rot, (md - rot @ ms)[:, None]], axis=1)


def expression_crop_matrix(kps: np.ndarray, size: int, geometry: str = "eyes_nose") -> np.ndarray:
    """(2, 3) image -> crop affine map of the expression crop: ``"eyes_nose"`` fits the similarity on the two eyes
    and the nose tip only, so a smile (mouth corners move 3-4 px) neither shifts nor scales the crop."""
    kps = _check_kps(kps).astype(np.float64)
    if _check_geometry(geometry) == "arcface":
        return _similarity_matrix(kps, arcface_template(size).astype(np.float64))
    return _similarity_matrix(kps[:3], expression_template(size).astype(np.float64))


def align_expression_face(
    image_rgb: np.ndarray, kps: np.ndarray, size: int = 224, geometry: str = "eyes_nose"
) -> np.ndarray:
    """The expression template crop: RGB [H, W, 3] uint8 + 5 keypoints (5, 2) -> RGB [size, size, 3] uint8.

    ``"arcface"`` is :func:`align_face` (insightface ``norm_crop``); ``"eyes_nose"`` see
    :func:`expression_crop_matrix`.
    """
    image_rgb = to_rgb_array(image_rgb, "image_rgb")
    if _check_geometry(geometry) == "arcface":
        return align_face(image_rgb, kps, size)
    import cv2

    matrix = expression_crop_matrix(kps, _check_crop_size(size), geometry)
    return cv2.warpAffine(image_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def expression_mask(size: int, geometry: str = "eyes_nose") -> np.ndarray:
    """Soft mask [size, size] float32 in [0, 1] of the expression crop's face region.

    ``"arcface"`` is :func:`face_mask`. ``"eyes_nose"``: an ellipse from 1.1 eye-to-mouth distances above the eyes
    (raised brows stay in) to 1.1 below the mouth (an open jaw stays in), 1.45 eye distances either side of the
    centre line, smoothstep edge over its outer 20 %.
    """
    size = _check_crop_size(size)
    if _check_geometry(geometry) == "arcface":
        return face_mask(size)
    tpl = expression_template(size).astype(np.float64)
    eye_y, eye_dist = tpl[:2, 1].mean(), tpl[1, 0] - tpl[0, 0]
    eye_mouth = (arcface_template(112)[3:, 1].mean() - arcface_template(112)[:2, 1].mean()) * 0.75 * size / 112.0
    top, bottom = eye_y - 1.1 * eye_mouth, eye_y + 2.1 * eye_mouth
    cx, cy = tpl[:2, 0].mean(), (top + bottom) / 2
    ax, ay = 1.45 * eye_dist, (bottom - top) / 2
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    radius = np.sqrt(((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2)
    t = np.clip((1.0 - radius) / 0.2, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def masked_template(crop: PIL.Image.Image, mask: np.ndarray, fill: float = 127.5) -> PIL.Image.Image:
    """Keep the face region of an aligned template crop and fill the rest with grey: the expression branch's input.

    crop: RGB (S, S); mask: (S, S) in [0, 1]. Used by the pipeline and by training, so both see the same input.
    """
    arr = np.asarray(crop.convert("RGB"), dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.shape != arr.shape[:2]:
        raise ValueError(f"`mask` has shape {mask.shape} but the crop is {arr.shape[:2]}.")
    out = arr * mask[..., None] + fill * (1.0 - mask[..., None])
    return PIL.Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
