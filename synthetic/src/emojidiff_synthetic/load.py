"""The shipped synthetic world, offline: pipeline folder, face front-ends and instruments.

``load_world()`` is what the README's main command and the result scripts use; the ``*_detector`` /
``*_expression_scorer`` factories are the ``module:factory`` hooks the stage scripts take
(``--detector emojidiff_synthetic.load:train_detector``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .world import check_side

ASSETS = Path(__file__).resolve().parent / "assets"
BASE_DIR = ASSETS / "base"  # the tiny SDXL-shaped base pipeline (StableDiffusionXLPipeline folder)
# the trained adapter (emoji_adapter/) that runs on BASE_DIR: the embedded default
EMOJIDIFF_DIR = ASSETS / "emojidiff"


def _require(path: Path, what: str, command: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"The synthetic world's {what} is not shipped in this checkout ({path}); build it with `{command}`."
        )
    return path


def detector(side: str = "train"):
    """The world's keypoint detector of `side`: a FaceAnalyzer known-keypoint callable (image -> faces)."""
    from .keypoints import load_keypoint_detector

    return load_keypoint_detector(check_side(side))


def train_detector():
    return detector("train")


def eval_detector():
    return detector("eval")


def face_analyzer(side: str = "train"):
    """FaceAnalyzer for this world: its keypoint detector + its ArcFace-shaped recognizer, through insightface."""
    from emojidiff_pipeline.face import FaceAnalyzer

    from .instruments import identity_onnx_path

    return FaceAnalyzer.from_models(detector=detector(side), recognizer=identity_onnx_path(check_side(side)))


def expression_scorer(side: str = "train") -> Callable[[Sequence[np.ndarray], Sequence[Any]], np.ndarray]:
    """(images uint8 (H, W, 3) each, keypoints (5, 2) or None each) -> (N, 11) expression factors.

    Images without keypoints go through the world's detector of the same side."""
    from .instruments import estimate_expressions, load_expression_estimator

    estimator = load_expression_estimator(check_side(side))
    find = detector(side)

    def score(images, keypoints):
        images = [np.asarray(im) for im in images]
        kps = []
        for i, (im, k) in enumerate(zip(images, keypoints)):
            if k is None:
                faces = find(im)
                if not faces:
                    raise ValueError(f"No face found in image {i} for expression scoring.")
                k = faces[0][1]
            kps.append(np.asarray(k, np.float32))
        return estimate_expressions(estimator, np.stack(images), np.stack(kps))

    return score


def train_expression_scorer():
    return expression_scorer("train")


def eval_expression_scorer():
    return expression_scorer("eval")


def expression_encoder(side: str = "train"):
    """The world's expression estimator of `side` as an :class:`~emojidiff_pipeline.expression.ExpressionEncoder`
    (11 factors in [0, 1]): the code stream's encoder is the train side; evaluation stays on the eval side."""
    from emojidiff_pipeline.expression import CallableExpressionEncoder

    from .renderer import EXPRESSION_FIELDS

    return CallableExpressionEncoder(
        expression_scorer(side), name=f"emojidiff-synthetic/expression-{side}", code_dim=len(EXPRESSION_FIELDS)
    )


def train_expression_encoder():
    return expression_encoder("train")


def face_loss_model(kind: str, side: str = "train"):
    """The world's `kind` ("expression" or "identity") instrument of `side` as a
    :class:`~emojidiff_pipeline.train.face_losses.DifferentiableFaceModel` (torch, on ArcFace-aligned 112 crops in
    [-1, 1]) for stage 1's face losses. Training uses the train side; evaluation measures with the eval side."""
    from emojidiff_pipeline.train.face_losses import DifferentiableFaceModel

    from .instruments import load_expression_estimator, load_identity_encoder

    loaders = {"expression": load_expression_estimator, "identity": load_identity_encoder}
    if kind not in loaders:
        raise ValueError(f"`kind` must be one of {sorted(loaders)}, got {kind!r}.")
    return DifferentiableFaceModel(loaders[kind](check_side(side)), name=f"emojidiff-synthetic/{kind}-{side}")


def train_expression_loss_model():
    return face_loss_model("expression", "train")


def train_identity_loss_model():
    return face_loss_model("identity", "train")


@dataclass
class World:
    """Handles to the shipped world. Heavy parts load on first use."""

    base_dir: Path = BASE_DIR
    emojidiff_dir: Path = EMOJIDIFF_DIR
    _cache: dict = field(default_factory=dict, repr=False)

    def pipeline(self, with_adapter: bool = True, **kwargs):
        """EmojiDiffPipeline of the base model, with the embedded default's trained adapter unless `with_adapter` is
        False; `kwargs` go to ``from_pretrained`` (e.g. ``torch_dtype``)."""
        from emojidiff_pipeline.adapter import EmojiDiffAdapter
        from emojidiff_pipeline.pipeline import EmojiDiffPipeline

        pipe = EmojiDiffPipeline.from_pretrained(
            _require(self.base_dir, "base model", "python synthetic/scripts/train_base.py"), **kwargs
        )
        if with_adapter:
            folder = _require(
                self.emojidiff_dir / "emoji_adapter", "trained EmojiDiff adapter", "python training/results.py"
            )
            adapter = EmojiDiffAdapter.from_pretrained(folder).to(pipe.unet.dtype)
            pipe.set_emoji_adapter(adapter)
            if adapter.uses_code_stream:
                pipe.set_expression_encoder(expression_encoder("train"))
        return pipe

    @cached_property
    def train_face(self):
        """Face front-end for training and filtering (train-side detector and recognizer)."""
        return face_analyzer("train")

    @cached_property
    def eval_face(self):
        """Face front-end for evaluation only (eval-side detector and recognizer)."""
        return face_analyzer("eval")

    def instrument(self, name: str):
        """'identity_train', 'identity_eval', 'expression_train', 'expression_eval' or 'style' (torch modules)."""
        from . import instruments

        loaders = {
            "identity_train": lambda: instruments.load_identity_encoder("train"),
            "identity_eval": lambda: instruments.load_identity_encoder("eval"),
            "expression_train": lambda: instruments.load_expression_estimator("train"),
            "expression_eval": lambda: instruments.load_expression_estimator("eval"),
            "style": instruments.load_style_classifier,
        }
        if name not in loaders:
            raise ValueError(f"`name` must be one of {sorted(loaders)}, got {name!r}.")
        if name not in self._cache:
            self._cache[name] = loaders[name]()
        return self._cache[name]


def load_world() -> World:
    """The synthetic world shipped in this package (no network): see :class:`World`."""
    return World()
