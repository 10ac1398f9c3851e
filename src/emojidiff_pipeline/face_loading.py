"""Finding and loading the face front-end's models: insightface imported with install hints, model-pack folders
(never downloaded), one ONNX model checked for its task, and the front-end's argument checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

FACE_INSTALL_COMMAND = 'pip install "emojidiff_pipeline[face]"'
INSIGHTFACE_INSTALL_COMMAND = "pip install --no-deps insightface==2.1"

# Files of insightface's published model packs (non-commercial research licence), for error messages.
KNOWN_MODEL_PACKS = {
    "buffalo_l": ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx"),
    "buffalo_m": ("1k3d68.onnx", "2d106det.onnx", "det_2.5g.onnx", "genderage.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("1k3d68.onnx", "2d106det.onnx", "det_500m.onnx", "genderage.onnx", "w600k_mbf.onnx"),
    "buffalo_sc": ("det_500m.onnx", "w600k_mbf.onnx"),
    "antelopev2": ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx"),
}

FACE_POLICIES = ("largest",)


def import_insightface() -> Any:
    """Import insightface (and its cv2 / onnxruntime needs) or raise an ImportError with the pip command."""
    try:
        import cv2  # noqa: F401
        import insightface
        import insightface.app
        import insightface.model_zoo
        import insightface.utils.face_align
        import onnxruntime  # noqa: F401
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise ImportError(
            f"The face front-end needs insightface, onnxruntime and opencv, but `{missing}` could not be imported. "
            f"Install them with `{FACE_INSTALL_COMMAND}`; insightface itself must be installed with "
            f"`{INSIGHTFACE_INSTALL_COMMAND}` (it declares the GUI opencv-python, which clashes with "
            "opencv-python-headless)."
        ) from err
    return insightface


def check_det_size(det_size: Any) -> tuple[int, int]:
    if (
        not isinstance(det_size, (tuple, list))
        or len(det_size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in det_size)
    ):
        raise ValueError(f"`det_size` must be a pair of ints (width, height), but got {det_size!r}.")
    if any(v <= 0 or v % 32 != 0 for v in det_size):
        raise ValueError(f"`det_size` values must be positive multiples of 32, but got {tuple(det_size)}.")
    return int(det_size[0]), int(det_size[1])


def check_face_policy(face_policy: Any) -> str | int:
    if isinstance(face_policy, str):
        if face_policy not in FACE_POLICIES:
            raise ValueError(
                f"`face_policy` must be one of {list(FACE_POLICIES)} or a non-negative int index into the "
                f"largest-first faces, but got {face_policy!r}."
            )
        return face_policy
    if isinstance(face_policy, bool) or not isinstance(face_policy, (int, np.integer)) or face_policy < 0:
        raise ValueError(
            f"`face_policy` must be 'largest' or a non-negative int index into the largest-first faces, but got "
            f"{face_policy!r}."
        )
    return int(face_policy)


def check_providers(providers: Any) -> list:
    if isinstance(providers, str) or not isinstance(providers, Sequence) or len(providers) == 0:
        raise ValueError(
            "`providers` must be a non-empty sequence of onnxruntime execution providers, e.g. "
            f"('CPUExecutionProvider',), but got {providers!r}."
        )
    return list(providers)


def pack_help(name: str) -> str:
    files = KNOWN_MODEL_PACKS.get(name)
    listing = f"for {name}: {', '.join(files)}; " if files else ""
    return (
        f"Put the pack's .onnx files there ({listing}at least an SCRFD detection model and an ArcFace "
        "recognition model). Nothing is downloaded automatically: get the pack from insightface's model zoo "
        "(licensed for non-commercial research only) and unzip it into that folder, pass `root=`, or build "
        "the analyzer with `FaceAnalyzer.from_models(detector=..., recognizer=...)`."
    )


def find_model_dir(name: str, root: str | os.PathLike) -> Path:
    as_path = Path(name).expanduser()
    if as_path.is_absolute() or os.sep in name or name.startswith("~"):
        model_dir = as_path
    else:
        model_dir = Path(root).expanduser() / "models" / name
    if not model_dir.is_dir():
        reason = "the folder does not exist"
    elif not any(model_dir.glob("*.onnx")) and not (model_dir / "manifest.json").is_file():
        reason = "the folder has no .onnx files"
    else:
        return model_dir.resolve()
    raise FileNotFoundError(
        f"insightface model pack `{name}` not found: looked in {model_dir} ({reason}). {pack_help(name)}"
    )


def load_onnx(path: str | os.PathLike, arg: str, task: str, providers: list) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`{arg}` file not found: {path}. Nothing is downloaded automatically.")
    import_insightface()
    from insightface import model_zoo

    try:
        model = model_zoo.get_model(str(path), providers=providers)
    except Exception as err:
        raise ValueError(f"`{arg}`: insightface could not load {path}: {err}") from err
    routed = getattr(model, "taskname", None)
    if routed != task:
        if task == "detection":
            expected = "an SCRFD detector (>= 5 outputs)"
        else:
            expected = "an ArcFace recognizer (square input >= 112, divisible by 16; one output)"
        raise ValueError(
            f"`{arg}` {path} is not {expected}: insightface routed it to "
            f"{type(model).__name__ if model is not None else 'nothing'} (task {routed!r})."
        )
    return model
