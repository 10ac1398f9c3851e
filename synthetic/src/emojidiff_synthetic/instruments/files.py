"""The instruments' files: safetensors with the constructor config in the metadata (no pickle), the shipped
asset folder, and the loaders of the train-side and eval-side versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..world import EVAL_SIDE_SEED_BASE, TRAIN_SIDE_SEED_BASE, check_side
from .networks import KINDS, ExpressionEstimator, IdentityEncoder, StyleClassifier

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "instruments"
TRAIN_COMMAND = "python synthetic/scripts/train_instruments.py"
_FORMAT = "emojidiff_instrument/1"


def side_seed_base(side: str) -> int:
    """First seed of a side's training identities (``world.TRAIN_SIDE_SEED_BASE`` or ``EVAL_SIDE_SEED_BASE``)."""
    return TRAIN_SIDE_SEED_BASE if check_side(side) == "train" else EVAL_SIDE_SEED_BASE


def kind_of(module: nn.Module) -> str:
    for kind, cls in KINDS.items():
        if isinstance(module, cls):
            return kind
    raise ValueError(f"`module` must be one of {[c.__name__ for c in KINDS.values()]}, got {type(module).__name__}.")


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
    metadata = {"format": _FORMAT, "kind": kind_of(module), "config": json.dumps(module.config)}
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
    module = KINDS[kind](**json.loads(metadata["config"]))
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
    check_side(side)
    return _load_instrument(instrument_path(f"identity_{side}.safetensors", asset_dir), "identity_encoder")


def identity_onnx_path(side: str = "train", asset_dir: str | os.PathLike | None = None) -> Path:
    """Path of the shipped ArcFace-shaped ONNX recognizer of `side` (for ``FaceAnalyzer.from_models(recognizer=)``)."""
    check_side(side)
    path = instrument_path(f"identity_{side}.onnx", asset_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"Identity recognizer not found: {path}. Rebuild it with `{TRAIN_COMMAND} --which identity_{side}`."
        )
    return path


def load_expression_estimator(side: str = "train", asset_dir: str | os.PathLike | None = None) -> ExpressionEstimator:
    """The shipped expression estimator of `side` ("train" or "eval"), eval mode, float32, frozen."""
    check_side(side)
    return _load_instrument(instrument_path(f"expression_{side}.safetensors", asset_dir), "expression_estimator")


def load_style_classifier(asset_dir: str | os.PathLike | None = None) -> StyleClassifier:
    """The shipped style classifier, eval mode, float32, frozen."""
    return _load_instrument(instrument_path("style.safetensors", asset_dir), "style_classifier")
