"""Checkpoints of the base model's stages (``save_pretrained`` folders, optimizer tensors in safetensors, JSON; no
pickle) and the EMA of the trained weights."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)


def weights_file(folder: Path) -> Path:
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No safetensors weights in {folder}.")


class EMA:
    """Exponential moving average of parameters, keyed by ``"<module>.<param name>"`` (warm-up: the decay is
    ``min(decay, (1 + t) / (10 + t))``)."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.modules, self.decay = modules, decay
        self.shadow = {
            f"{m}.{n}": p.detach().clone().float()
            for m, mod in modules.items()
            for n, p in mod.named_parameters()
            if p.requires_grad
        }

    def _params(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        for m, mod in self.modules.items():
            for n, p in mod.named_parameters():
                key = f"{m}.{n}"
                if key in self.shadow:
                    yield key, p

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for key, p in self._params():
            self.shadow[key].lerp_(p.detach().float(), 1.0 - d)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the modules."""
        backup = {}
        with torch.no_grad():
            for key, p in self._params():
                backup[key] = p.detach().clone()
                p.copy_(self.shadow[key])
        try:
            yield
        finally:
            with torch.no_grad():
                for key, p in self._params():
                    p.copy_(backup[key])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA checkpoint does not match the trained parameters.")
        for k, v in state.items():
            self.shadow[k].copy_(v)


def save_checkpoint(
    folder: Path,
    modules: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    step: int,
    extra: dict[str, Any] | None = None,
    ema: EMA | None = None,
) -> None:
    """Write `folder` atomically: one ``save_pretrained`` folder per module, optimizer.safetensors, ema.safetensors,
    state.json (step, param groups, `extra`)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        module.save_pretrained(tmp / name)
    state = optimizer.state_dict()
    tensors = {
        f"{idx}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
        for idx, s in state["state"].items()
        for k, v in s.items()
    }
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
    meta = {"step": step, "param_groups": state["param_groups"], "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_checkpoint(
    folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, ema: EMA | None = None
) -> tuple[int, dict[str, Any]]:
    """Restore module weights, optimizer state and EMA from `folder`; returns (step, extra)."""
    for name, module in modules.items():
        module.load_state_dict(load_file(weights_file(folder / name)))
    meta = json.loads((folder / "state.json").read_text())
    state: dict[int, dict] = {}
    for key, value in load_file(folder / "optimizer.safetensors").items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if ema is not None:
        ema.load_state_dict(load_file(folder / "ema.safetensors"))
    return int(meta["step"]), meta["extra"]


def list_checkpoints(stage_dir: Path) -> list[Path]:
    found = [p for p in stage_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune_checkpoints(stage_dir: Path, limit: int | None) -> None:
    if limit:
        for old in list_checkpoints(stage_dir)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
