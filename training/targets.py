"""What the results ship and how far they are from the expression-transfer issue's targets: the final-row rule,
the targets measured on that row (targets.json / .md), and the export of its adapter as the embedded default. Used by
training/results.py (the whole table) and training/ship.py (a choice among evaluated rows)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from emojidiff_pipeline.train.atomic import atomic_path, write_text_atomic

logger = logging.getLogger("results")
MOUTH_AND_EYES = ("smile", "frown", "jaw_open", "pucker", "eye_close_left", "eye_close_right")


def final_row(rows: dict[str, dict], specs: dict[str, str] | None = None) -> str:
    """The name of the row that ships: among the non-oracle, two-branch rows (not ``base``, not ``identity_only``,
    no ``@`` scale override in ``specs``) whose identity similarity is at least 0.9 of the identity-only row's (when
    that row is there), the lowest expression error; among the rows within one standard error of it (a difference
    the benchmark cannot resolve), the highest identity similarity."""
    floor = 0.9 * rows["identity_only"]["identity_similarity"] if "identity_only" in rows else -1.0
    candidates = {
        name: r
        for name, r in rows.items()
        if name not in ("base", "identity_only")
        and "oracle" not in name
        and "@" not in (specs or {}).get(name, "")
        and r["identity_similarity"] >= floor
    }
    if not candidates:
        raise RuntimeError("No non-oracle two-branch row keeps identity; nothing to ship.")
    best = min(candidates.values(), key=lambda r: r["expression_error"])
    bar = best["expression_error"] + best.get("expression_error_se", 0.0)
    near = [n for n, r in candidates.items() if r["expression_error"] <= bar]
    return max(near, key=lambda n: (candidates[n]["identity_similarity"], -candidates[n]["expression_error"]))


def best_adapter(results: dict, specs: dict[str, str]) -> str:
    """The adapter folder of ``final_row``."""
    return specs[final_row(results["rows"], specs)]


def check_targets(results: dict, rounds: list[dict], specs: dict[str, str] | None = None) -> list[dict]:
    """The expression-transfer issue's targets, each {target, measured, op, threshold, condition, met}; a target whose
    rows were not run is reported as such (measured NaN, not met). The final model is ``final_row(rows, specs)``."""
    rows, refs = results["rows"], results.get("reference_lines", {})
    nan = float("nan")
    final_name = final_row(rows, specs)
    final = rows[final_name]
    neutral = refs.get("ref_neutral_face", {}).get("expression_error", nan)
    per_factor = final.get("expression_error_per_factor") or {}
    mouth_eyes = max((per_factor[f] for f in MOUTH_AND_EYES if f in per_factor), default=nan)
    separation = (neutral - final["expression_error"]) / final.get("expression_error_se", nan)
    ceiling = results["same_person_identity_similarity"]
    idi_name = f"stage1_idi_round_{len(rounds) - 1}" if rounds else None
    same = rows.get("stage1_same_identity_code")

    def ratio(a, b, key):
        return a[key] / b[key] if a is not None and b is not None and b[key] else nan

    idi_row = rows.get(idi_name) if idi_name else None
    preset, all_layers = rows.get("stage1_same_identity_code"), rows.get("same_identity_code_all_layers")
    idi_ratio = ratio(idi_row, same, "expression_error")
    preset_ratio = ratio(preset, all_layers, "expression_error")
    checks = [
        (f"expression error of the final model ({final_name})", final["expression_error"], "<=", 0.07, True, ""),
        ("worst mouth/eye factor error of the final model", mouth_eyes, "<=", 0.05, True, ""),
        ("final model below the always-neutral line, in standard errors", separation, ">=", 2.0, True,
         f"(neutral {neutral:.3f})"),
        ("identity similarity of the final model / same-person similarity", final["identity_similarity"] / ceiling,
         ">=", 0.6, True, ""),
        ("identity leakage of the final model", final["identity_leakage"], "<=", 0.02, True, ""),
        ("identity leakage after IDI - same-identity row's",
         idi_row["identity_leakage"] - same["identity_leakage"] if idi_row and same else nan, "<", 0.0,
         idi_ratio <= 1.1, f"and expression error ratio <= 1.1 (measured {idi_ratio:.3f})"),
        ("style leakage: preset - all layers",
         preset["style_leakage"] - all_layers["style_leakage"] if preset and all_layers else nan, "<", 0.0,
         preset_ratio <= 1.1, f"and expression error preset / all layers <= 1.1 (measured {preset_ratio:.3f})"),
    ]  # fmt: skip
    out = []
    for name, value, op, threshold, also, also_text in checks:
        met = bool(value <= threshold if op == "<=" else value >= threshold if op == ">=" else value < threshold)
        out.append(
            {
                "target": name,
                "measured": round(float(value), 4),
                "op": op,
                "threshold": threshold,
                "condition": also_text,
                "met": bool(met and also and value == value),
            }
        )
    return out


def write_targets(
    results: dict,
    rounds: list[dict],
    out: Path,
    command: str,
    specs: dict[str, str] | None = None,
    name: str = "targets",
) -> None:
    """<name>.json + <name>.md: every target with its measured value ("not run" when its rows are missing), and
    each IDI round's yield and speed."""
    checks = check_targets(results, rounds, specs)
    write_text_atomic(
        out / f"{name}.json", json.dumps({"targets": checks, "idi_rounds": rounds, "command": command}, indent=1)
    )
    lines = [
        "# Targets of the synthetic results (expression transfer)",
        "",
        f"Written by `{command}` from `results.json` and the IDI rounds' `round_stats.json` (do not edit by hand).",
        "",
        "| target | measured | target value | met |",
        "| --- | --- | --- | --- |",
    ]
    for c in checks:
        measured = "not run" if c["measured"] != c["measured"] else f"{c['measured']:.3f}"
        target = " ".join(filter(None, (c["op"], str(c["threshold"]), c["condition"])))
        lines.append(f"| {c['target']} | {measured} | {target} | {'yes' if c['met'] else 'no'} |")
    lines += [
        "",
        "Image quality (face sharpness, Frechet distance of identity features to the perfect outputs, style",
        "following) is in the columns of `results.md`, next to the base model's own samples (the `base` row).",
    ]
    if rounds:
        lines += [
            "",
            "| IDI round | pairs tried | accepted | yield | rejected by | accepted pairs per compute minute |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r} | {s['pairs']} | {s['accepted']} | {s['yield']:.3f} | {s['rejected_by']} | "
            f"{s['accepted_per_compute_minute']} |"
            for r, s in enumerate(rounds)
        ]
    write_text_atomic(out / f"{name}.md", "\n".join(lines) + "\n")


def export(adapter_dir: str, folder: Path) -> None:
    """The adapter, in fp16, as the embedded default (``<folder>/emoji_adapter``); it runs on the shipped base
    model (``World.pipeline()``), so the base weights are not stored twice. Atomic: a kill while exporting leaves the
    previous default in place. The adapter's records beside its config (ICA's ``ani.json``: the timestep bound it was
    trained with) travel with it."""
    import shutil

    import torch

    from emojidiff_pipeline import EmojiDiffAdapter

    adapter = EmojiDiffAdapter.from_pretrained(adapter_dir).to(torch.float16)
    with atomic_path(folder) as tmp:
        adapter.save_pretrained(tmp / "emoji_adapter")
        for record in sorted(Path(adapter_dir).glob("*.json")):
            if record.name != "config.json":
                shutil.copy2(record, tmp / "emoji_adapter" / record.name)
    logger.info("Exported the embedded default to %s", folder)
