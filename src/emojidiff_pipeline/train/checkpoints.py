"""One checkpoint format for every trainer of the project (the adapter's stages, the synthetic base model, its
instruments and keypoint detectors), and the run folder's housekeeping.

A checkpoint is a folder, written under a temporary name and renamed into place (a kill leaves the previous
checkpoint or the complete new one), holding:

- ``<name>/``, one per trained model: ``save_pretrained`` for diffusers / transformers models, else
  ``model.safetensors`` with the module's state dict;
- ``optimizer.safetensors``: the optimizer's state tensors, keyed ``"<param index>.<key>"``;
- ``<name>.safetensors`` for each extra tensor group (for example an EMA of the weights);
- ``state.json``, written last: ``{"step", "param_groups", "extra"}`` (JSON-able extras, e.g. the settings a resume
  must match).

Nothing is pickled. Readers name the file that is missing, unreadable or does not fit the run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_path

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
WEIGHTS_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")  # diffusers, transformers / plain


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restores besides the weights: the step it was saved at, its JSON extras and the
    extra tensor groups that were asked for."""

    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def weights_file(folder: Path) -> Path:
    """The safetensors weights of a saved model folder (diffusers' or transformers' file name)."""
    for name in WEIGHTS_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"{folder} holds no safetensors weights ({' or '.join(WEIGHTS_FILES)}).")


def save_model(model: torch.nn.Module, folder: Path) -> None:
    """``save_pretrained`` when the model has it, else its state dict as ``folder/model.safetensors``."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            str(folder / "model.safetensors"),
        )


def save_pretrained_atomic(model, folder: Path) -> None:
    """``save_pretrained`` into a temporary folder, then rename into place: a finished folder is never half written."""
    with atomic_path(folder) as tmp:
        model.save_pretrained(tmp)


def save_checkpoint(
    folder: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Write the checkpoint folder `folder` atomically (see the module docstring); `tensors` maps a group name to a
    state dict saved as ``<name>.safetensors``."""
    state = optimizer.state_dict()
    optimizer_tensors = {
        f"{idx}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
        for idx, s in state["state"].items()
        for k, v in s.items()
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, model in models.items():
            save_model(model, tmp / name)
        save_file(optimizer_tensors, str(tmp / OPTIMIZER_FILE))
        for name, group in (tensors or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in group.items()}, str(tmp / f"{name}.safetensors"))
        meta = {"step": step, "param_groups": state["param_groups"], "extra": extra or {}}
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1))


def required_files(models: tuple[str, ...]) -> list[str]:
    """The files a complete checkpoint of `models` holds (a model's weights may also be ``model.safetensors``)."""
    return [STATE_FILE, OPTIMIZER_FILE, *(f"{name}/{WEIGHTS_FILES[0]}" for name in models)]


def missing_files(folder: Path, models: tuple[str, ...]) -> list[str]:
    """The files of :func:`required_files` that `folder` lacks (empty when it is complete)."""
    folder = Path(folder)
    missing = [name for name in (STATE_FILE, OPTIMIZER_FILE) if not (folder / name).is_file()]
    for name in models:
        if not any((folder / name / w).is_file() for w in WEIGHTS_FILES):
            missing.append(f"{name}/{WEIGHTS_FILES[0]}")
    return missing


def _read_safetensors(path: Path, folder: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as err:  # SafetensorError, OSError: truncated or not safetensors
        raise OSError(f"Checkpoint {folder}: {path} cannot be read ({err}); it is corrupt or truncated.") from err


def load_checkpoint(
    folder: Path,
    models: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    tensor_groups: tuple[str, ...] = (),
) -> Checkpoint:
    """Restore the weights of `models` and the state of `optimizer` from `folder`, and read `tensor_groups`.

    Raises ``FileNotFoundError`` / ``OSError`` / ``ValueError`` naming the file that is missing, unreadable, or
    does not fit the run's models (another configuration) or optimizer; nothing is restored then."""
    from ..weight_checks import check_tensor_shapes

    folder = Path(folder)
    missing = missing_files(folder, tuple(models)) + [
        f"{g}.safetensors" for g in tensor_groups if not (folder / f"{g}.safetensors").is_file()
    ]
    if missing:
        raise FileNotFoundError(f"Checkpoint {folder} is incomplete: it has no {folder / missing[0]}.")
    weights = {}
    for name, model in models.items():
        path = weights_file(folder / name)
        weights[name] = _read_safetensors(path, folder)
        check_tensor_shapes(
            {k: tuple(v.shape) for k, v in model.state_dict().items()},
            {k: tuple(v.shape) for k, v in weights[name].items()},
            f"Checkpoint {folder}",
            path,
            f"this run's {name}",
        )
    state_path, optimizer_path = folder / STATE_FILE, folder / OPTIMIZER_FILE
    try:
        meta = json.loads(state_path.read_text())
        step, param_groups, extra = int(meta["step"]), meta["param_groups"], meta.get("extra", {})
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Checkpoint {folder}: {state_path} is not a valid state file ({err!r}); it is corrupt or truncated."
        ) from err
    groups = {g: _read_safetensors(folder / f"{g}.safetensors", folder) for g in tensor_groups}
    tensors = _read_safetensors(optimizer_path, folder)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    try:
        for name, value in tensors.items():
            idx, key = name.split(".", 1)
            if value.ndim and tuple(value.shape) != tuple(params[int(idx)].shape):
                raise ValueError(
                    f"{name!r} has shape {tuple(value.shape)}, its parameter {tuple(params[int(idx)].shape)}"
                )
            state.setdefault(int(idx), {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": param_groups})
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(
            f"Checkpoint {folder}: {optimizer_path} and {state_path} do not fit this run's optimizer "
            f"({err}); the checkpoint belongs to another configuration."
        ) from err
    for name, model in models.items():
        model.load_state_dict(weights[name])
    return Checkpoint(step, extra, groups)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-<step> folders of `output_dir`, by step."""
    found = [
        p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(output_dir: Path, which: str, models: tuple[str, ...] = ("adapter",)) -> Path:
    """The checkpoint folder `which` names, or with ``"latest"`` the newest complete one in `output_dir` (incomplete
    folders, lacking a file of :func:`missing_files`, are skipped with a warning)."""
    if which != "latest":
        path = Path(which)
        missing = missing_files(path, models)
        if missing:
            raise FileNotFoundError(
                f"`resume_from_checkpoint`={which!r} is not a complete checkpoint folder: it has no {missing[0]}."
            )
        return path
    found = list_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"`resume_from_checkpoint`='latest' but {output_dir} holds no checkpoint-* folder.")
    for folder in reversed(found):
        missing = missing_files(folder, models)
        if not missing:
            return folder
        logger.warning("Skipping the incomplete checkpoint %s (it has no %s).", folder, ", ".join(missing))
    raise FileNotFoundError(
        f"`resume_from_checkpoint`='latest' but every checkpoint-* folder in {output_dir} is incomplete "
        f"({', '.join(p.name for p in found)}; each needs {', '.join(required_files(models))})."
    )


def prune_checkpoints(output_dir: Path, limit: int | None) -> None:
    """Keep the newest `limit` checkpoint folders of `output_dir` (None or 0: keep all)."""
    if limit:
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


# what an adapter training run writes into its output folder (besides checkpoint-<step>/); cache/ and the inputs not
RUN_ARTEFACTS = ("loss_log.jsonl", "val_log.jsonl", "run_info.json", "adapter", "best_adapter")


def prepare_run_folder(output_dir: Path, resume: bool, overwrite: bool, is_main_process: bool = True) -> None:
    """Refuse a fresh run (not `resume`) into a folder that holds another run's artefacts, which it would replace
    and mix with its own; with `overwrite`, the main process deletes them first (checkpoints, logs, adapters)."""
    output_dir = Path(output_dir)
    if resume or not output_dir.is_dir():
        return
    names = RUN_ARTEFACTS + tuple(f"{a}.{suffix}" for a in ("adapter", "best_adapter") for suffix in ("tmp", "old"))
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir()] + [output_dir / n for n in names]
    found = [p for p in found if p.exists()]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"`output_dir` {output_dir} already holds a training run ({', '.join(sorted(p.name for p in found))}). A "
            "fresh run would replace its log and adapter and mix its checkpoints with the new ones. Resume it with "
            "`--resume_from_checkpoint latest`, choose another `--output_dir`, or pass `--overwrite_output_dir` to "
            "delete the old run first."
        )
    if is_main_process:
        logger.warning(
            "`overwrite_output_dir`: deleting the previous run in %s (%s).",
            output_dir,
            ", ".join(sorted(p.name for p in found)),
        )
        for path in found:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
