"""Evaluation with eval-side instruments only: identity similarity, expression error, identity and style leakage.

A *case* is (reference image(s) of person B, expression template of person A != B, prompt). For every generated
image ``g``:

- identity similarity: ``cos(F(g), F(reference))``;
- expression error: mean absolute difference of the expression factors ``|E(g) - E(template)|``;
- identity leakage: ``cos(F(g), F(template)) - mean_s cos(F(g), F(stranger_s))`` over the other cases' people;
- style leakage (when a style classifier is given): the share of style heads on which the output shows the
  template's style where the prompt asked for another one.

``F``, ``E`` and the style classifier must be evaluation-side instruments that played no part in training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Case:
    reference: np.ndarray  # (H, W, 3) uint8, person B
    template: np.ndarray  # (H, W, 3) uint8, person A
    prompt: str
    reference_person: str
    template_person: str
    prompt_style: dict = field(default_factory=dict)  # head -> value the prompt asks for
    template_style: dict = field(default_factory=dict)  # head -> value the template shows
    reference_kps: np.ndarray | None = None
    template_kps: np.ndarray | None = None


@dataclass
class Instruments:
    """Eval-side measuring devices. `face` is a FaceAnalyzer; `expression(images, kps)` -> (N, K)."""

    face: Any
    expression: Callable[[Sequence[np.ndarray], Sequence[Any]], np.ndarray]
    style: Callable[[Sequence[np.ndarray]], dict[str, list[str]]] | None = None


def _embed(face, image, kps=None) -> np.ndarray | None:
    try:
        return face.identity_embedding(image, "image", kps=kps)
    except ValueError:  # no face: counted as a failure, not silently scored
        return None


def score_row(generated: Sequence[np.ndarray], cases: Sequence[Case], inst: Instruments) -> dict:
    """Metrics of one row (one generated image per case), means over cases with a detected face."""
    ref_emb = {c.reference_person: _embed(inst.face, c.reference, c.reference_kps) for c in cases}
    tpl_emb = {c.template_person: _embed(inst.face, c.template, c.template_kps) for c in cases}
    people = {**ref_emb, **tpl_emb}
    id_sim, leak, exp_err, style_leak, style_follow, failures = [], [], [], [], [], 0
    gen_kps = []
    for g, c in zip(generated, cases):
        faces = inst.face.detect(g, "generated")
        if not faces:
            failures += 1
            gen_kps.append(None)
            continue
        kps = inst.face.select(faces, "generated").kps
        gen_kps.append(kps)
        e = inst.face.identity_embedding(g, "generated", kps=kps)
        if ref_emb[c.reference_person] is not None:
            id_sim.append(float(e @ ref_emb[c.reference_person]))
        strangers = [
            v for p, v in people.items() if v is not None and p not in (c.template_person, c.reference_person)
        ]
        if tpl_emb[c.template_person] is not None and strangers:
            leak.append(float(e @ tpl_emb[c.template_person]) - float(np.mean([e @ s for s in strangers])))
    ok = [i for i, k in enumerate(gen_kps) if k is not None]
    if ok:
        est = inst.expression([generated[i] for i in ok] + [cases[i].template for i in ok],
                              [gen_kps[i] for i in ok] + [cases[i].template_kps for i in ok])  # fmt: skip
        exp_err = list(np.abs(est[: len(ok)] - est[len(ok) :]).mean(axis=1))
    if inst.style is not None:
        labels = inst.style(list(generated))
        for i, c in enumerate(cases):
            for head, asked in c.prompt_style.items():
                shown = c.template_style.get(head)
                if shown is None or shown == asked:
                    continue
                style_leak.append(float(labels[head][i] == shown))
                style_follow.append(float(labels[head][i] == asked))

    def mean(xs):
        return float(np.mean(xs)) if xs else float("nan")

    return {
        "identity_similarity": mean(id_sim),
        "expression_error": mean(exp_err),
        "identity_leakage": mean(leak),
        "style_leakage": mean(style_leak),
        "style_following": mean(style_follow),
        "no_face_rate": failures / max(1, len(cases)),
        "num_cases": len(cases),
    }


def same_person_similarity(pairs: Sequence[tuple[np.ndarray, np.ndarray, Any, Any]], face) -> float:
    """Mean cosine between two images of the same person (different expressions): the ceiling for identity."""
    sims = []
    for a, b, ka, kb in pairs:
        ea, eb = _embed(face, a, ka), _embed(face, b, kb)
        if ea is not None and eb is not None:
            sims.append(float(ea @ eb))
    return float(np.mean(sims)) if sims else float("nan")


def write_report(
    rows: dict[str, dict],
    extra: dict,
    out_dir: str | Path,
    command: str,
    title: str,
    not_measured: Sequence[str] = (),
) -> Path:
    """results.json + results.md (a table of every row) under `out_dir`.

    Columns named in `not_measured` (e.g. style metrics without style labels) show NaN as "n/a" in results.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({"rows": rows, **extra, "command": command}, indent=1))
    cols = ["identity_similarity", "expression_error", "identity_leakage", "style_leakage", "style_following",
            "no_face_rate"]  # fmt: skip
    lines = [f"# {title}", "", f"Written by `{command}` (do not edit by hand).", "",
             "| row | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]  # fmt: skip
    for name, r in rows.items():
        cells = ["n/a" if c in not_measured and np.isnan(r[c]) else f"{r[c]:.3f}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for k, v in extra.items():
        lines.append(f"- {k}: {v}")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return out_dir / "results.md"
