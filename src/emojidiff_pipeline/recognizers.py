"""Face recognizers as the adapter sees them: the ``FaceRecognizer`` protocol check (name, width, ``embed``), the
(name, width) record of any recognizer (protocol object or insightface ``ArcFaceONNX``), and the refusal of a
recognizer other than the one an adapter's identity branch was trained with (its config's ``identity_encoder`` and
``identity_embed_dim``). Needs only numpy; the protocol itself is :mod:`emojidiff_pipeline.face_models.protocols`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def is_face_recognizer(obj: Any) -> bool:
    """True for an object of the ``FaceRecognizer`` protocol (:mod:`emojidiff_pipeline.face_models.protocols`:
    `name`, `embedding_dim`, `embed(image, kps)`), not an insightface ``ArcFaceONNX``."""
    return all(hasattr(obj, a) for a in ("name", "embedding_dim")) and callable(getattr(obj, "embed", None))


def check_face_recognizer(recognizer: Any, arg: str = "recognizer") -> Any:
    """Return `recognizer` if it follows the ``FaceRecognizer`` protocol, else raise naming `arg` and what was
    received."""
    if not is_face_recognizer(recognizer):
        raise TypeError(
            f"`{arg}` must be a face recognizer with `name` (str), `embedding_dim` (int) and `embed(image, kps)` "
            f"(see emojidiff_pipeline.face_models.protocols), got {type(recognizer).__name__}."
        )
    dim = recognizer.embedding_dim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"`{arg}.embedding_dim` must be a positive int, got {dim!r}.")
    if not isinstance(recognizer.name, str) or not recognizer.name:
        raise ValueError(f"`{arg}.name` must be a non-empty string, got {recognizer.name!r}.")
    return recognizer


def recognizer_info(recognizer: Any) -> tuple[str | None, int | None]:
    """(name, embedding width) of a ``FaceRecognizer`` or an insightface ``ArcFaceONNX`` (name: its file stem)."""
    if recognizer is None:
        return None, None
    if is_face_recognizer(recognizer):
        return recognizer.name, int(recognizer.embedding_dim)
    model_file = getattr(recognizer, "model_file", None)
    name = f"insightface:{Path(model_file).stem}" if model_file else type(recognizer).__name__
    shape = getattr(recognizer, "output_shape", None)
    dim = shape[-1] if shape is not None and len(shape) >= 2 and isinstance(shape[-1], int) else None
    return name, dim


def check_adapter_recognizer(
    adapter_config: Any, recognizer_name: str | None, embedding_dim: int | None, arg: str = "face_analyzer"
) -> None:
    """Refuse a recognizer other than the one the adapter's identity branch was trained on (by width, then name).

    Adapters saved before `identity_encoder` was recorded (None) are checked by width only.
    """
    want_dim = adapter_config.identity_embed_dim
    want_name = getattr(adapter_config, "identity_encoder", None)
    if embedding_dim is not None and embedding_dim != want_dim:
        raise ValueError(
            f"`{arg}`'s recognizer {recognizer_name!r} gives {embedding_dim}-d embeddings, but the adapter's identity "
            f"branch was trained on {want_dim}-d embeddings (recognizer {want_name!r}). Use that recognizer."
        )
    if want_name is not None and recognizer_name is not None and recognizer_name != want_name:
        raise ValueError(
            f"`{arg}`'s recognizer is {recognizer_name!r}, but the adapter's identity branch was trained with the "
            f"recognizer {want_name!r}; embeddings of another model mean other things. Use that recognizer."
        )
