"""Two evaluated rows side by side, paired over templates: the difference a row makes on the same cases.

    python training/compare.py docs/results/experiments/base_chain/results.json:stage2_ica_no_alignment \\
        docs/results/experiments/ica_no_alignment/results.json:stage2_ica_no_alignment --out docs/results/compare

Both rows must come from evaluations of the same cases (``ship.same_cases``: the same case description and
reference lines). For expression error, identity similarity and identity leakage it writes the difference (first
row minus second) and its standard error paired over the templates both rows scored
(``evaluation.paired_difference``: the spread of each template's mean in one row minus the other's, so the
templates' own spread, most of each row's standard error, cancels), or, where a row was scored before the harness
kept per-template means, the unpaired error of two independent means (null where a row has no standard error
either). Writes ``<out>.json`` and ``<out>.md``.
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
    in results.json's ``rows``); ``paired`` is False (and ``templates`` None) where a row lacks
    ``<metric>_per_template`` or the two share fewer than 2 templates; ``se`` is None where it cannot be given."""
    from emojidiff_pipeline.evaluation import paired_difference

    out = {}
    for metric in METRICS:
        key = f"{metric}_per_template"
        shared = set(a.get(key, {})) & set(b.get(key, {}))
        if len(shared) >= 2:
            _, se, n = paired_difference(a[key], b[key])
        else:
            se, n = float(np.hypot(a.get(f"{metric}_se", np.nan), b.get(f"{metric}_se", np.nan))), None
        out[metric] = {
            "first": round(a[metric], 4),
            "second": round(b[metric], 4),
            "difference": round(a[metric] - b[metric], 4),
            "se": round(se, 4) if np.isfinite(se) else None,
            "paired": n is not None,
            "templates": n,
        }
    return out


def se_text(se: float | None) -> str:
    """A standard error as the reports print it: four decimals, or n/a where none could be given."""
    return "n/a" if se is None else f"{se:.4f}"


def _load_row(name: str, path: Path, row: str) -> tuple[dict, dict]:
    """(the results file, the row's scores) for argument `name`, or exit naming the argument and what was there."""
    try:
        file = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{name}: {str(path)!r} is not a readable results.json ({err})") from None
    if not isinstance(file, dict) or not isinstance(file.get("rows"), dict):
        raise SystemExit(f"{name}: {str(path)!r} has no 'rows' (pass an evaluation's results.json, not a row cache)")
    if row not in file["rows"]:
        raise SystemExit(f"{name}: {str(path)!r} has no row {row!r} (rows: {', '.join(file['rows'])})")
    missing = [m for m in METRICS if m not in file["rows"][row]]
    if missing:
        raise SystemExit(f"{name}: row {row!r} of {str(path)!r} has no {', '.join(missing)}")
    return file, file["rows"][row]


def main(args: argparse.Namespace) -> dict:
    (path_a, row_a), (path_b, row_b) = args.first, args.second
    file_a, a = _load_row("first", path_a, row_a)
    file_b, b = _load_row("second", path_b, row_b)
    if not ship.same_cases(file_a, file_b):
        raise SystemExit(f"{path_a} and {path_b} did not score the same cases (case description or reference lines)")
    scores = compare(a, b)
    command = "python training/compare.py " + shlex.join(args.argv)
    report = {"command": command, "first": f"{path_a}:{row_a}", "second": f"{path_b}:{row_b}", "metrics": scores}
    lines = [
        f"# {path_a.parent.name}/{row_a} against {path_b.parent.name}/{row_b}",
        "",
        f"Written by `{command}` (do not edit by hand). First: `{path_a}` row `{row_a}`; second: `{path_b}` row "
        f"`{row_b}`; difference = first - second, its standard error paired over templates where both rows kept "
        "per-template means, else that of two independent means (n/a where a row has none).",
        "",
        "| metric | first | second | difference | standard error | paired | templates |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for metric, s in scores.items():
        se = se_text(s["se"])
        n = "" if s["templates"] is None else s["templates"]
        lines.append(
            f"| {metric} | {s['first']:.4f} | {s['second']:.4f} | {s['difference']:+.4f} | {se} | "
            f"{'yes' if s['paired'] else 'no'} | {n} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.parent / f"{out.name}.json", json.dumps(report, indent=1))
    write_text_atomic(out.parent / f"{out.name}.md", "\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main(parse_args())
