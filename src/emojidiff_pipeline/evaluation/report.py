"""The evaluation report: results.json, results.md (one row per evaluated model, the reference lines first) and
the bar plot of the main columns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..train.atomic import write_text_atomic


def _cell(row: dict, col: str, not_measured: Sequence[str]) -> str:
    value = row.get(col, float("nan"))
    if col in not_measured and np.isnan(value):
        return "n/a"
    se = row.get(f"{col}_se")
    return f"{value:.3f} +- {se:.3f}" if se is not None and np.isfinite(se) else f"{value:.3f}"


def write_report(
    rows: dict[str, dict],
    extra: dict,
    out_dir: str | Path,
    command: str,
    title: str,
    not_measured: Sequence[str] = (),
) -> Path:
    """results.json + results.md (a table of every row, standard errors over templates after +-) under `out_dir`.

    ``extra["reference_lines"]`` (rows scored on reference images, e.g. a neutral face and a perfect output) open
    the table; rows with ``emotion_agreement`` add the emotion columns; rows with per-factor expression errors get
    a second table; ``extra["template_probe"]`` (row ->
    :func:`template_use_probe`) a third. Columns named in `not_measured` show NaN as "n/a".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "results.json", json.dumps({"rows": rows, **extra, "command": command}, indent=1))
    references = extra.get("reference_lines", {})
    everything = {**{f"*{k}*": v for k, v in references.items()}, **rows}
    cols = [
        "identity_similarity",
        "expression_error",
        "identity_leakage",
        "style_leakage",
        "style_following",
        "face_sharpness",
        "frechet_to_real",
        "no_face_rate",
    ]
    if any("emotion_agreement" in r for r in everything.values()):  # an emotion classifier was given
        cols[-1:-1] = ["emotion_agreement", "emotion_top1_agreement"]
    lines = [
        f"# {title}",
        "",
        f"Written by `{command}` (do not edit by hand).",
        "",
        "| row | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for name, r in everything.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r, c, not_measured) for c in cols) + " |")
    factors = next(
        (list(r["expression_error_per_factor"]) for r in everything.values() if r.get("expression_error_per_factor")),
        [],
    )
    if factors:
        lines += [
            "",
            "Expression error per factor (mean absolute error of the eval-side estimator):",
            "",
            "| row | " + " | ".join(factors) + " |",
            "| --- |" + " --- |" * len(factors),
        ]
        for name, r in everything.items():
            pf = r.get("expression_error_per_factor") or {}
            lines.append(f"| {name} | " + " | ".join(f"{pf[f]:.3f}" if f in pf else "" for f in factors) + " |")
    probes = extra.get("template_probe") or {}
    if probes:
        lines += [
            "",
            "Controlled probe: diffusion loss on the perfect target with the right template, the same "
            "template person re-rendered with another expression (same style and pose), and no expression:",
            "",
            "| row | right | wrong expression | none | wrong / right - 1 | none / right - 1 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, pr in probes.items():
            lines.append(
                f"| {name} | {pr['loss_right_template']:.4f} | {pr['loss_wrong_expression_template']:.4f} | "
                f"{pr['loss_no_expression']:.4f} | {pr['wrong_vs_right']:+.4f} +- {pr['wrong_vs_right_se']:.4f} "
                f"| {pr['none_vs_right']:+.4f} +- {pr['none_vs_right_se']:.4f} |"
            )
    lines.append("")
    for k, v in extra.items():
        if k not in ("reference_lines", "template_probe"):
            v = ", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else v
            lines.append(f"- {k}: {v}")
    write_text_atomic(out_dir / "results.md", "\n".join(lines) + "\n")
    return out_dir / "results.md"


PLOT_METRICS = ("identity_similarity", "expression_error", "identity_leakage", "face_sharpness")


def plot_rows(rows: dict[str, dict], path: str | Path, metrics: Sequence[str] = PLOT_METRICS, title: str = "") -> Path:
    """One panel per metric, one bar per row with its standard error (``<metric>_se``, over templates) as the error
    bar; rows without a value show "n/a". Written as a PNG with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 1.2 + 0.45 * len(names) * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        values = np.array([rows[n].get(metric, np.nan) for n in names], dtype=float)
        errors = np.array([rows[n].get(f"{metric}_se", np.nan) for n in names], dtype=float)
        y = np.arange(len(names))
        ax.barh(y, np.nan_to_num(values), xerr=np.where(np.isfinite(errors), errors, 0), color="#4c78a8", capsize=3)
        for k, v in enumerate(values):
            ax.text(
                0 if not np.isfinite(v) else v,
                k,
                "  n/a" if not np.isfinite(v) else f"  {v:.3f}",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metric.replace("_", " "), fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
