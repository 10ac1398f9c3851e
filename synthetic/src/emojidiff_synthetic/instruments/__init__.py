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
evaluation and export: ``synthetic/scripts/train_instruments.py`` over :mod:`.training`; accuracy reports:
``docs/instruments.md``.

Modules: ``preprocess`` (checks, alignment, normalisation), ``networks``, ``files`` (save, load, shipped paths),
``measure`` (batched outputs and the reports' metrics), ``render_sets`` (renders with known factors); training:
``recipes`` (the shipped recipe and the run's typed config), ``training``, ``export``, ``evaluation``, ``report``
and ``run`` (the whole rebuild).

This package imports torch; ``emojidiff_synthetic`` itself does not import it.
"""

from ..world import SIDES
from .files import (
    ASSET_DIR,
    TRAIN_COMMAND,
    identity_onnx_path,
    instrument_path,
    load_expression_estimator,
    load_identity_encoder,
    load_style_classifier,
    save_instrument,
    side_seed_base,
)
from .measure import classify_styles, embed_identities, estimate_expressions, expression_mae, tar_at_far
from .networks import EMBEDDING_DIM, STYLE_HEADS, ExpressionEstimator, IdentityEncoder, StyleClassifier
from .preprocess import (
    FACE_SIZE,
    INPUT_MEAN,
    INPUT_STD,
    STYLE_IMAGE_SIZE,
    align_faces,
    preprocess_face,
    preprocess_faces,
    preprocess_style,
)
from .render_sets import IDENTITY_FACTOR_FIELDS, RenderSet, held_out_identity_ids, identity_factor_targets, render_set

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
    "TRAIN_COMMAND",
]
