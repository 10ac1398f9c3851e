"""Instruments trained on renders: identity encoders, expression estimators and a style classifier.

DESIGN.md's measuring devices for the synthetic world. Each exists in a *train-side* version (may be used by training,
e.g. for an identity loss) and an *eval-side* version (used only to evaluate), which differ in architecture, seed
and training identities (``world.TRAIN_SIDE_SEED_BASE + k`` vs ``world.EVAL_SIDE_SEED_BASE + k``; never the
collection's identities). The style classifier exists once (trained on eval-side identities).

- Identity encoder: aligned 112x112 RGB face crop, normalised as insightface's ``ArcFaceONNX`` does
  (``(x - 127.5) / 127.5``, RGB) -> 512-d embedding (L2-normalise downstream). Shipped as safetensors (the torch
  module, differentiable) and as an ArcFace-shaped ONNX file that ``insightface.model_zoo.get_model`` routes to
  ``ArcFaceONNX`` (input ``"input.1"`` [N, 3, 112, 112] -> [N, 512]).
- Expression estimator: the same aligned, normalised crop -> the 11 factors of ``EXPRESSION_FIELDS`` in [0, 1].
- Style classifier: the full 64x64 render, normalised the same way -> logits for the heads ``STYLE_HEADS``
  (choices ``STYLE_CHOICES[head]``).

Weights load with safetensors only (the module's constructor config is stored in the file's metadata). Training,
evaluation and export: ``synthetic/scripts/train_instruments.py``; accuracy reports: ``docs/instruments.md``.

This module imports torch; ``emojidiff_synthetic`` itself does not import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .renderer import EXPRESSION_FIELDS, HAIR_STYLES, STYLE_CHOICES, Expression, Identity, Pose, Style, render
from .world import DEFAULT_NUM_IDENTITIES, EVAL_SIDE_SEED_BASE, TRAIN_SIDE_SEED_BASE, is_held_out

__all__ = [
    "ASSET_DIR",
    "EMBEDDING_DIM",
    "FACE_SIZE",
    "IDENTITY_FACTOR_FIELDS",
    "INPUT_MEAN",
    "INPUT_STD",
    "SIDES",
    "STYLE_HEADS",
    "STYLE_IMAGE_SIZE",
    "ExpressionEstimator",
    "IdentityEncoder",
    "RenderSet",
    "StyleClassifier",
    "align_faces",
    "classify_styles",
    "embed_identities",
    "estimate_expressions",
    "expression_mae",
    "held_out_identity_ids",
    "identity_factor_targets",
    "identity_onnx_path",
    "instrument_path",
    "load_expression_estimator",
    "load_identity_encoder",
    "load_style_classifier",
    "preprocess_face",
    "preprocess_faces",
    "preprocess_style",
    "render_set",
    "save_instrument",
    "side_seed_base",
    "tar_at_far",
]

ASSET_DIR = Path(__file__).resolve().parent / "assets" / "instruments"
SIDES: tuple[str, ...] = ("train", "eval")
FACE_SIZE = 112
STYLE_IMAGE_SIZE = 64
EMBEDDING_DIM = 512
INPUT_MEAN = 127.5  # insightface ArcFaceONNX: (x - 127.5) / 127.5 on RGB
INPUT_STD = 127.5
STYLE_HEADS: tuple[str, ...] = ("rendering", "palette", "background", "pattern")
# Ground-truth identity factors the identity encoders regress as an auxiliary task (hair style is a class).
IDENTITY_FACTOR_FIELDS: tuple[str, ...] = (
    "face_width",
    "face_height",
    "jaw",
    "skin_tone",
    "hair_color",
    "eye_shape",
    "eye_size",
    "eye_spacing",
    "iris_color",
    "nose_size",
    "ear_size",
    "brow_thickness",
    "mouth_width",
    "freckles",
    "glasses",
)
TRAIN_COMMAND = "python synthetic/scripts/train_instruments.py"
_FORMAT = "emojidiff_instrument/1"


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------


def _check_side(side: Any) -> str:
    if side not in SIDES:
        raise ValueError(f"`side` must be one of {list(SIDES)}, but got {side!r}.")
    return side


def side_seed_base(side: str) -> int:
    """First seed of a side's training identities (``world.TRAIN_SIDE_SEED_BASE`` or ``EVAL_SIDE_SEED_BASE``)."""
    return TRAIN_SIDE_SEED_BASE if _check_side(side) == "train" else EVAL_SIDE_SEED_BASE


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


def _normalise(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32, (x - 127.5) / 127.5 (ArcFaceONNX's input convention)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float()
    return (x - INPUT_MEAN) / INPUT_STD


def align_faces(images: Any, keypoints: Any, size: int = FACE_SIZE) -> np.ndarray:
    """5-point alignment of each image onto the ArcFace template: -> (N, size, size, 3) uint8 RGB.

    images: (N, H, W, 3) uint8 RGB (or a sequence of such images); keypoints: (N, 5, 2) in insightface order, pixel
    coordinates (``RenderResult.keypoints``). Uses ``face.align_face`` (insightface ``norm_crop``), so the crops are
    the ones ``ArcFaceONNX.get`` computes.
    """
    from emojidiff_pipeline.face import align_face

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
    return _normalise(align_faces(image[None], kps[None]))[0]


def preprocess_faces(images: Any, keypoints: Any) -> torch.Tensor:
    """Batch version of :func:`preprocess_face`: (N, H, W, 3) uint8 + (N, 5, 2) -> (N, 3, 112, 112) float32."""
    return _normalise(align_faces(images, keypoints))


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
    return _normalise(out)


# ----------------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------------


def _conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: str | None = "relu"
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "prelu":
        layers.append(nn.PReLU(cout))
    elif act is not None:
        raise ValueError(f"`act` must be 'relu', 'prelu' or None, but got {act!r}.")
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs + shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1, act=None)
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else _conv_bn(cin, cout, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class _InvertedResidual(nn.Module):
    """MobileNetV2 / MobileFaceNet block: 1x1 expand, 3x3 depthwise, 1x1 linear projection (+ residual)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int = 2):
        super().__init__()
        mid = cin * expansion
        self.body = nn.Sequential(
            _conv_bn(cin, mid, 1, act="prelu"),
            _conv_bn(mid, mid, 3, stride, groups=mid, act="prelu"),
            _conv_bn(mid, cout, 1, act=None),
        )
        self.residual = cin == cout and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class _PlainStage(nn.Module):
    """VGG-style stage: 2x2 max-pooling when `stride` is 2, then `depth` 3x3 conv-BN-ReLU layers."""

    def __init__(self, cin: int, cout: int, stride: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.MaxPool2d(2)] if stride == 2 else []
        layers.extend(_conv_bn(cin if i == 0 else cout, cout) for i in range(depth))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


ARCHS: tuple[str, ...] = ("resnet", "mobilenet", "vgg")


def _backbone(arch: str, widths: Sequence[int], depths: Sequence[int], in_pool: int) -> nn.Sequential:
    """Feature extractor: (N, 3, S, S) -> (N, widths[-1], S / (in_pool * 2 ** len(widths)), ...).

    The input is first average-pooled by `in_pool` (the 112 crop of a 64 px render holds about 56 px of detail), then
    a stride-2 stem, then one stage per width; every stage but the first halves the resolution.
    """
    if arch not in ARCHS:
        raise ValueError(f"`arch` must be one of {list(ARCHS)}, but got {arch!r}.")
    if len(widths) != len(depths) or not widths or min(depths) < 1:
        raise ValueError(f"`widths` and `depths` must be non-empty and of equal length, got {widths}, {depths}.")
    layers: list[nn.Module] = [nn.AvgPool2d(in_pool)] if in_pool > 1 else []
    act = "prelu" if arch == "mobilenet" else "relu"
    layers.append(_conv_bn(3, widths[0], 3, 2, act=act))
    cin = widths[0]
    for i, (cout, depth) in enumerate(zip(widths, depths)):
        stride = 1 if i == 0 else 2
        if arch == "vgg":
            layers.append(_PlainStage(cin, cout, stride, depth))
        else:
            block = _BasicBlock if arch == "resnet" else _InvertedResidual
            layers.extend(block(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(depth))
        cin = cout
    return nn.Sequential(*layers)


class _GlobalDepthwise(nn.Module):
    """MobileFaceNet's global depthwise conv (GDC): a per-channel learned spatial weighting of the final map."""

    def __init__(self, channels: int, spatial: int | tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, spatial, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N, C)
        return self.bn(self.conv(x)).flatten(1)


class IdentityEncoder(nn.Module):
    """Face recognizer for aligned crops: (N, 3, 112, 112) normalised RGB -> (N, 512) embedding (not normalised).

    backbone -> GDC -> dropout -> linear -> BatchNorm1d, ArcFace's "BN-dropout-FC-BN" output layer.

    Args:
        arch: backbone type, one of ``ARCHS`` ("resnet" basic blocks, "mobilenet" inverted residuals, "vgg").
        widths: channels per stage (the first stage runs at 28x28, each later one halves the resolution).
        depths: blocks (or conv layers for "vgg") per stage.
        embedding_dim: output size (512, as insightface's recognizers).
        dropout: dropout before the final linear layer (training only).
    """

    def __init__(
        self,
        arch: str = "resnet",
        widths: Sequence[int] = (32, 64, 96),
        depths: Sequence[int] = (2, 2, 2),
        embedding_dim: int = EMBEDDING_DIM,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.config = {
            "arch": arch,
            "widths": list(widths),
            "depths": list(depths),
            "embedding_dim": int(embedding_dim),
            "dropout": float(dropout),
        }
        self.backbone = _backbone(arch, widths, depths, in_pool=2)
        spatial = FACE_SIZE // (2 * 2 ** len(widths))
        self.gdc = _GlobalDepthwise(widths[-1], spatial)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, FACE_SIZE, "IdentityEncoder")
        return self.bn(self.fc(self.dropout(self.gdc(self.backbone(x)))))  # (N, 512)


# Rows and columns of the aligned 112x112 crop that hold both eyes (ArcFace template: eyes at y = 51.6,
# x = 38.3 and 73.5), read at full resolution by the expression estimators' eye branch.
EYE_BAND: tuple[slice, slice] = (slice(36, 68), slice(20, 92))


class ExpressionEstimator(nn.Module):
    """Expression regressor for aligned crops: (N, 3, 112, 112) normalised RGB -> (N, 11) factors in [0, 1].

    Factors in ``EXPRESSION_FIELDS`` order. Face branch (the crop pooled to 56x56) -> GDC, optionally an eye branch
    (``EYE_BAND`` of the crop at full resolution, for the gaze: the iris moves by about 2 px of a 64 px render over
    the whole gaze range) -> GDC; concatenated -> MLP -> sigmoid.

    Args:
        arch: backbone type of both branches, one of ``ARCHS``.
        widths: channels per stage of the face branch.
        depths: blocks per stage of the face branch.
        hidden: width of the MLP's hidden layer.
        eye_widths: channels per stage of the eye branch; empty for no eye branch.
        eye_depths: blocks per stage of the eye branch.
    """

    def __init__(
        self,
        arch: str = "resnet",
        widths: Sequence[int] = (24, 48, 64),
        depths: Sequence[int] = (1, 2, 2),
        hidden: int = 128,
        eye_widths: Sequence[int] = (),
        eye_depths: Sequence[int] = (),
    ):
        super().__init__()
        self.config = {
            "arch": arch,
            "widths": list(widths),
            "depths": list(depths),
            "hidden": int(hidden),
            "eye_widths": list(eye_widths),
            "eye_depths": list(eye_depths),
        }
        self.backbone = _backbone(arch, widths, depths, in_pool=2)
        spatial = FACE_SIZE // (2 * 2 ** len(widths))
        self.gdc = _GlobalDepthwise(widths[-1], spatial)
        features = widths[-1]
        if eye_widths:
            self.eye_backbone = _backbone(arch, eye_widths, eye_depths, in_pool=1)
            down = 2 ** len(eye_widths)
            rows, cols = (sl.stop - sl.start for sl in EYE_BAND)
            self.eye_gdc = _GlobalDepthwise(eye_widths[-1], (rows // down, cols // down))
            features += eye_widths[-1]
        self.head = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, len(EXPRESSION_FIELDS))
        )

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs (N, 11)."""
        _check_input(x, FACE_SIZE, "ExpressionEstimator")
        f = self.gdc(self.backbone(x))  # (N, C)
        if self.config["eye_widths"]:
            f = torch.cat([f, self.eye_gdc(self.eye_backbone(x[:, :, EYE_BAND[0], EYE_BAND[1]]))], 1)
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))  # (N, 11) in [0, 1]


class StyleClassifier(nn.Module):
    """Style heads for full renders: (N, 3, 64, 64) normalised RGB -> {head: (N, len(STYLE_CHOICES[head])) logits}.

    Args:
        widths: channels per stage (stem at 32x32, then halving).
        depths: basic blocks per stage.
    """

    def __init__(self, widths: Sequence[int] = (32, 48, 64), depths: Sequence[int] = (1, 1, 1)):
        super().__init__()
        self.config = {"widths": list(widths), "depths": list(depths)}
        self.backbone = _backbone("resnet", widths, depths, in_pool=1)
        self.heads = nn.ModuleDict({h: nn.Linear(2 * widths[-1], len(STYLE_CHOICES[h])) for h in STYLE_HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_input(x, STYLE_IMAGE_SIZE, "StyleClassifier")
        f = self.backbone(x)  # (N, C, 8, 8)
        pooled = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)  # (N, 2C)
        return {h: head(pooled) for h, head in self.heads.items()}


def _check_input(x: Any, size: int, who: str) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__qualname__
        raise ValueError(
            f"{who} expects a tensor (N, 3, {size}, {size}) normalised as (x - 127.5) / 127.5 (RGB), but got {got}."
        )


_KINDS: dict[str, type[nn.Module]] = {
    "identity_encoder": IdentityEncoder,
    "expression_estimator": ExpressionEstimator,
    "style_classifier": StyleClassifier,
}


# ----------------------------------------------------------------------------------------------------------------
# Saving and loading (safetensors only)
# ----------------------------------------------------------------------------------------------------------------


def _kind_of(module: nn.Module) -> str:
    for kind, cls in _KINDS.items():
        if isinstance(module, cls):
            return kind
    raise ValueError(f"`module` must be one of {[c.__name__ for c in _KINDS.values()]}, got {type(module).__name__}.")


def save_instrument(
    module: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float16, extra: dict | None = None
) -> Path:
    """Write `module`'s weights (cast to `dtype`) and constructor config to a safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, t in module.state_dict().items():
        t = t.detach().cpu()
        tensors[name] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    metadata = {"format": _FORMAT, "kind": _kind_of(module), "config": json.dumps(module.config)}
    if extra:
        metadata["extra"] = json.dumps(extra)
    save_file(tensors, str(path), metadata=metadata)
    return path


def _load_instrument(path: Path, kind: str) -> nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(
            f"Instrument weights not found: {path}. The shipped instruments live in {ASSET_DIR}; rebuild them with "
            f"`{TRAIN_COMMAND}` (see docs/instruments.md)."
        )
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != _FORMAT or metadata.get("kind") != kind:
        raise ValueError(
            f"{path} is not a {kind} saved by `save_instrument` (metadata format={metadata.get('format')!r}, "
            f"kind={metadata.get('kind')!r})."
        )
    module = _KINDS[kind](**json.loads(metadata["config"]))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    module.load_state_dict(state, strict=True)
    module.eval().requires_grad_(False)
    return module


def instrument_path(name: str, asset_dir: str | os.PathLike | None = None) -> Path:
    """Path of a shipped instrument file, e.g. ``instrument_path("identity_train.onnx")``."""
    return Path(asset_dir if asset_dir is not None else ASSET_DIR) / name


def load_identity_encoder(side: str = "train", asset_dir: str | os.PathLike | None = None) -> IdentityEncoder:
    """The shipped identity encoder of `side` ("train" or "eval") as a torch module in eval mode, float32.

    Input (N, 3, 112, 112) from :func:`preprocess_faces`; output (N, 512) (L2-normalise it). Parameters are frozen
    (``requires_grad=False``); gradients still flow to the input, so it can serve as a differentiable identity loss.
    """
    _check_side(side)
    return _load_instrument(instrument_path(f"identity_{side}.safetensors", asset_dir), "identity_encoder")


def identity_onnx_path(side: str = "train", asset_dir: str | os.PathLike | None = None) -> Path:
    """Path of the shipped ArcFace-shaped ONNX recognizer of `side` (for ``FaceAnalyzer.from_models(recognizer=)``)."""
    _check_side(side)
    path = instrument_path(f"identity_{side}.onnx", asset_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"Identity recognizer not found: {path}. Rebuild it with `{TRAIN_COMMAND} --which identity_{side}`."
        )
    return path


def load_expression_estimator(side: str = "train", asset_dir: str | os.PathLike | None = None) -> ExpressionEstimator:
    """The shipped expression estimator of `side` ("train" or "eval"), eval mode, float32, frozen."""
    _check_side(side)
    return _load_instrument(instrument_path(f"expression_{side}.safetensors", asset_dir), "expression_estimator")


def load_style_classifier(asset_dir: str | os.PathLike | None = None) -> StyleClassifier:
    """The shipped style classifier, eval mode, float32, frozen."""
    return _load_instrument(instrument_path("style.safetensors", asset_dir), "style_classifier")


# ----------------------------------------------------------------------------------------------------------------
# Batch helpers: uint8 images (+ keypoints) -> numbers
# ----------------------------------------------------------------------------------------------------------------


def _batched(module: nn.Module, x: torch.Tensor, batch_size: int) -> Any:
    with torch.no_grad():
        outs = [module(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def embed_identities(encoder: IdentityEncoder, images: Any, keypoints: Any, batch_size: int = 256) -> np.ndarray:
    """L2-normalised identity embeddings (N, 512) float32 of renders (N, H, W, 3) uint8 with keypoints (N, 5, 2)."""
    emb = _batched(encoder, preprocess_faces(images, keypoints), batch_size)
    return F.normalize(emb, dim=1).numpy()


def estimate_expressions(
    estimator: ExpressionEstimator, images: Any, keypoints: Any, batch_size: int = 256
) -> np.ndarray:
    """Expression factors (N, 11) float32 in [0, 1], ``EXPRESSION_FIELDS`` order, of renders with keypoints."""
    return _batched(estimator, preprocess_faces(images, keypoints), batch_size).numpy()


def classify_styles(classifier: StyleClassifier, images: Any, batch_size: int = 256) -> dict[str, Any]:
    """Style of full renders: ``{"labels": {head: [name, ...]}, "probs": {head: (N, n_choices) array}}``."""
    logits = _batched(classifier, preprocess_style(images), batch_size)
    probs = {h: torch.softmax(v, 1).numpy() for h, v in logits.items()}
    labels = {h: [STYLE_CHOICES[h][i] for i in p.argmax(1)] for h, p in probs.items()}
    return {"labels": labels, "probs": probs}


# ----------------------------------------------------------------------------------------------------------------
# Data: renders with known factors, and the metrics of the reports
# ----------------------------------------------------------------------------------------------------------------


def identity_factor_targets(identity: Identity) -> tuple[np.ndarray, int]:
    """Auxiliary targets of an identity: (len(IDENTITY_FACTOR_FIELDS),) float32 in [0, 1] and the hair-style index."""
    values = np.array([float(getattr(identity, n)) for n in IDENTITY_FACTOR_FIELDS], dtype=np.float32)
    return values, HAIR_STYLES.index(identity.hair_style)


def held_out_identity_ids(num_identities: int = DEFAULT_NUM_IDENTITIES) -> list[int]:
    """The collection's held-out identity ids (``world.is_held_out``) below `num_identities`."""
    return [i for i in range(num_identities) if is_held_out(i)]


class RenderSet(dict):
    """Arrays of a rendered set (a dict): ``images`` (N, 64, 64, 3) uint8, ``keypoints`` (N, 5, 2), ``faces``
    (N, 112, 112, 3) uint8 aligned crops, ``label`` (N,) identity index in the set, ``identity_seed`` (N,),
    ``expression`` (N, 11), ``style`` (N, 4) indices in ``STYLE_HEADS`` order, ``identity_factors`` (N, 15) and
    ``hair_style`` (N,)."""


def render_set(
    identity_seeds: Sequence[int],
    photos_per_identity: int,
    seed: int,
    size: int = STYLE_IMAGE_SIZE,
    keypoint_jitter: float = 0.0,
) -> RenderSet:
    """Render `photos_per_identity` photos of each identity ``Identity.from_seed(s)`` with random expression, style
    and pose (``Expression.random``, ``Style.random``, ``Pose.random``) drawn from ``np.random.default_rng(seed)``.

    `keypoint_jitter`: std (pixels) of Gaussian noise on the keypoints used for the aligned crops (augmentation; the
    stored ``keypoints`` stay exact).
    """
    rng = np.random.default_rng(seed)
    n = len(identity_seeds) * photos_per_identity
    out = RenderSet(
        images=np.empty((n, size, size, 3), np.uint8),
        keypoints=np.empty((n, 5, 2), np.float32),
        faces=np.empty((n, FACE_SIZE, FACE_SIZE, 3), np.uint8),
        label=np.empty(n, np.int64),
        identity_seed=np.empty(n, np.int64),
        expression=np.empty((n, len(EXPRESSION_FIELDS)), np.float32),
        style=np.empty((n, len(STYLE_HEADS)), np.int64),
        identity_factors=np.empty((n, len(IDENTITY_FACTOR_FIELDS)), np.float32),
        hair_style=np.empty(n, np.int64),
    )
    from emojidiff_pipeline.face import align_face

    k = 0
    for label, id_seed in enumerate(identity_seeds):
        identity = Identity.from_seed(int(id_seed))
        factors, hair = identity_factor_targets(identity)
        for _ in range(photos_per_identity):
            expression, style, pose = Expression.random(rng), Style.random(rng), Pose.random(rng)
            r = render(identity, expression, style, pose, size=size)
            kps = r.keypoints
            if keypoint_jitter > 0:
                kps = kps + rng.normal(0.0, keypoint_jitter, kps.shape).astype(np.float32)
            out["images"][k] = r.image
            out["keypoints"][k] = r.keypoints
            out["faces"][k] = align_face(r.image, kps, FACE_SIZE)
            out["label"][k] = label
            out["identity_seed"][k] = int(id_seed)
            out["expression"][k] = expression.to_vector()
            out["style"][k] = [STYLE_CHOICES[h].index(getattr(style, h)) for h in STYLE_HEADS]
            out["identity_factors"][k] = factors
            out["hair_style"][k] = hair
            k += 1
    return out


def tar_at_far(embeddings: np.ndarray, labels: np.ndarray, fars: Sequence[float] = (1e-3, 1e-4)) -> dict[str, Any]:
    """Verification on all pairs: genuine = same label, impostor = different labels; cosine scores.

    For each FAR, the threshold is the smallest score that at most a FAR fraction of impostor pairs exceed; TAR is
    the fraction of genuine pairs above it. embeddings (N, D) (normalised here), labels (N,).
    """
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    labels = np.asarray(labels)
    scores = e @ e.T
    iu = np.triu_indices(len(e), k=1)
    s = scores[iu]
    same = labels[iu[0]] == labels[iu[1]]
    genuine, impostor = s[same], np.sort(s[~same])
    out: dict[str, Any] = {
        "genuine_pairs": int(genuine.size),
        "impostor_pairs": int(impostor.size),
        "genuine_mean": float(genuine.mean()),
        "impostor_mean": float(impostor.mean()),
    }
    for far in fars:
        k = int(np.floor(far * impostor.size))  # number of impostors allowed above the threshold
        threshold = float(impostor[impostor.size - k - 1]) if k < impostor.size else float(impostor[0])
        out[f"tar@far={far:g}"] = float((genuine > threshold).mean())
        out[f"threshold@far={far:g}"] = threshold
    return out


def expression_mae(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Mean absolute error per factor, keyed by ``EXPRESSION_FIELDS``."""
    err = np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))
    return {name: float(err[:, i].mean()) for i, name in enumerate(EXPRESSION_FIELDS)}
