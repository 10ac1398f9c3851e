"""Two evaluated rows side by side, paired over templates: the difference a row makes on the same cases.

    python training/compare.py docs/results/experiments/base_chain/results.json:stage2_ica_no_alignment \\
        docs/results/experiments/ica_no_alignment/results.json:stage2_ica_no_alignment --out docs/results/compare

Both rows must come from evaluations of the same cases (``ship.same_cases``: the same case description and
reference lines). For expression error, identity similarity and identity leakage it writes the difference (first
row minus second) and its standard error paired over the templates both rows scored
(``evaluation.paired_difference``: each template's mean in one row minus the other's, so the templates' own spread,
most of each row's standard error, cancels), or, for rows scored before the harness kept per-template means, the
unpaired error of two independent means. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from emojidiff_pipeline.train.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ship  # noqa: E402

METRICS = ("expression_error", "identity_similarity", "identity_leakage")


def _row_arg(value: str) -> tuple[Path, str]:
    path, sep, row = value.rpartition(":")
    if not sep or not path or not row:
        raise argparse.ArgumentTypeError(f"expected RESULTS_JSON:ROW_NAME, got {value!r}")
    return Path(path), row


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("first", type=_row_arg, help="RESULTS_JSON:ROW_NAME (the row measured)")
    p.add_argument("second", type=_row_arg, help="RESULTS_JSON:ROW_NAME (the row it is measured against)")
    p.add_argument("--out", required=True, help="output path without suffix (writes .json and .md)")
    args = p.parse_args(input_args)
    for name in ("first", "second"):
        if not getattr(args, name)[0].is_file():
            p.error(f"{name}: no such results file {str(getattr(args, name)[0])!r}")
    args.argv = sys.argv[1:] if input_args is None else list(input_args)
    return args


def compare(a: dict, b: dict) -> dict:
    """{metric: {"first", "second", "difference", "se", "paired", "templates"}} for two rows' scores (dicts as
    in results.json's ``rows``); ``paired`` is False where a row lacks ``<metric>_per_template``."""
    from emojidiff_pipeline.evaluation import paired_difference

    out = {}
    for metric in METRICS:
        key = f"{metric}_per_template"
        if key in a and key in b:
            difference, se, n = paired_difference(a[key], b[key])
            paired = True
        else:
            difference = a[metric] - b[metric]
            se, n = float(np.hypot(a.get(f"{metric}_se", np.nan), b.get(f"{metric}_se", np.nan))), None
            paired = False
        out[metric] = {
            "first": round(a[metric], 4),
            "second": round(b[metric], 4),
            "difference": round(difference, 4),
            "se": round(se, 4),
            "paired": paired,
            "templates": n,
        }
    return out


def main(args: argparse.Namespace) -> dict:
    (path_a, row_a), (path_b, row_b) = args.first, args.second
    files = [json.loads(Path(p).read_text()) for p in (path_a, path_b)]
    for (path, row), file in zip((args.first, args.second), files):
        if row not in file["rows"]:
            raise SystemExit(f"{path}: no row {row!r} (rows: {', '.join(file['rows'])})")
    if not ship.same_cases(*files):
        raise SystemExit(f"{path_a} and {path_b} did not score the same cases (case description or reference lines)")
    scores = compare(files[0]["rows"][row_a], files[1]["rows"][row_b])
    command = "python training/compare.py " + shlex.join(args.argv)
    report = {"command": command, "first": f"{path_a}:{row_a}", "second": f"{path_b}:{row_b}", "metrics": scores}
    lines = [
        f"# {row_a} against {row_b}",
        "",
        f"Written by `{command}` (do not edit by hand). First: `{path_a}` row `{row_a}`; second: `{path_b}` row "
        f"`{row_b}`; difference = first - second, its standard error paired over templates where both rows kept "
        "per-template means, else unpaired.",
        "",
        "| metric | first | second | difference | standard error | paired | templates |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for metric, s in scores.items():
        n = "" if s["templates"] is None else s["templates"]
        lines.append(
            f"| {metric} | {s['first']:.4f} | {s['second']:.4f} | {s['difference']:+.4f} | {s['se']:.4f} | "
            f"{'yes' if s['paired'] else 'no'} | {n} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(report, indent=1))
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main(parse_args())
