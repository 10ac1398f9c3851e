"""A rebuild of the instruments: for each selected one, train (or resume), export, evaluate on held-out identities and
write its report entry (:func:`run_instruments`; the CLI is ``synthetic/scripts/train_instruments.py``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .evaluation import evaluate, verdict
from .export import export, fp16_round
from .files import side_seed_base
from .recipes import DESCRIPTIONS, INSTRUMENTS, RunConfig, setting
from .report import augmentation_text, render_markdown, write_reports
from .training import heldout_data, side_data, train

logger = logging.getLogger(__name__)


def rewrite_report(docs_dir: str | Path) -> dict[str, Any]:
    """Rewrite ``instruments.md`` from ``instruments.json`` only; returns the entries."""
    report = json.loads((Path(docs_dir) / "instruments.json").read_text())
    (Path(docs_dir) / "instruments.md").write_text(render_markdown(report))
    return report["instruments"]


def _entry(
    name: str, config: RunConfig, model: nn.Module, files: list[Path], facts: dict, timing: dict, root: Path | None
) -> dict[str, Any]:
    """The report entry of one instrument (what the markdown page shows)."""
    spec = INSTRUMENTS[name]
    identities = setting(config, name, "identities")
    base = side_seed_base(spec["side"])
    return {
        "kind": spec["kind"],
        "side": spec["side"],
        "description": DESCRIPTIONS[spec["kind"]],
        "model": spec["model"],
        "seed": spec["seed"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_identities": identities,
        "identity_seed_range": f"{base}..{base + identities - 1}",
        **timing,
        **facts,
        "files": [str(f.relative_to(root)) if root and f.is_relative_to(root) else str(f) for f in files],
        "file_bytes": {f.name: f.stat().st_size for f in files},
        "augmentation": augmentation_text(spec["kind"], config, facts["identity_hflip"] or 0.0),
    }


def run_instruments(config: RunConfig, command: str, root: str | Path | None = None) -> dict[str, dict]:
    """Rebuild the instruments `config.which`; `command` is recorded in the reports and file paths are reported
    relative to `root` (the repository) when under it. Returns the report entries by instrument name."""
    torch.set_num_threads(config.threads)
    root = Path(root) if root is not None else None
    out = Path(config.out)
    held, held_seconds = heldout_data(config)
    cache: dict[str, tuple] = {}
    entries = {}
    for name in config.which:
        spec = INSTRUMENTS[name]
        identities = setting(config, name, "identities")
        if (spec["side"], identities) not in cache:
            cache[spec["side"], identities] = side_data(config, spec["side"], identities)
        data, render_seconds = cache[spec["side"], identities]
        model, facts = train(name, config, data)
        start = time.time()
        model = fp16_round(model)
        files = export(name, model, out)
        result = evaluate(name, model, held, data, out)
        timing = {
            "training_renders": int(len(data["label"])),
            "eval_identities": int(len(np.unique(held["label"]))),
            "eval_renders": int(len(held["label"])),
            "render_seconds": round(render_seconds, 1),
            "eval_render_seconds": round(held_seconds, 1),
            "eval_seconds": round(time.time() - start, 1),
        }
        entries[name] = {
            **_entry(name, config, model, files, facts, timing, root),
            "command": command,
            "result": result,
            "verdict": verdict(spec["kind"], result),
        }
        v = entries[name]["verdict"]
        logger.info(
            "[%s] %s = %.4f (target %s): %s",
            name,
            v["metric"],
            v["value"],
            v["target"],
            "met" if v["met"] else "MISSED",
        )
        write_reports(Path(config.docs_dir), {name: entries[name]}, command)
    return entries
