"""The instruments' networks: identity encoder (ArcFace-shaped output layer), expression estimator (with an eye
branch) and style classifier, on small ResNet / MobileNet / VGG backbones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..renderer import EXPRESSION_FIELDS, STYLE_CHOICES
from .preprocess import FACE_SIZE, STYLE_IMAGE_SIZE

EMBEDDING_DIM = 512
STYLE_HEADS: tuple[str, ...] = ("rendering", "palette", "background", "pattern")


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


KINDS: dict[str, type[nn.Module]] = {
    "identity_encoder": IdentityEncoder,
    "expression_estimator": ExpressionEstimator,
    "style_classifier": StyleClassifier,
}
