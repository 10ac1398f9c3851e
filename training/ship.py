"""Choose the embedded default from rows already evaluated on the same benchmark, and export it.

    python training/ship.py --results docs/results/experiments/factor_push/results.json \\
        --results docs/results/experiments/ica_no_alignment/results.json [--export FOLDER] [--dry_run]

Rows trained outside the results driver (experiments) are evaluated by training/evaluate.py into their own folders;
this reads those ``results.json`` files, refuses files that were not scored on the same cases (their reference
lines must agree), applies the driver's rule (``targets.final_row``: lowest expression error, then the highest
identity within one standard error of it) and exports the chosen adapter as the package's embedded default.
Writes ``docs/results/shipped.json`` and ``shipped.md`` (the candidates, the rule and the choice) and
``shipped_targets.json`` / ``.md`` (the expression-transfer issue's targets, measured on the chosen row).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from emojidiff_pipeline.train.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", action="append", required=True, help="an evaluated results.json (repeat)")
    p.add_argument("--export", default=None, help="folder for the embedded default (default: the package asset)")
    p.add_argument("--out", default="docs/results", help="folder for shipped.json and shipped.md")
    p.add_argument("--dry_run", action="store_true", help="choose and report, do not export")
    args = p.parse_args(input_args)
    for path in args.results:
        if not Path(path).is_file():
            p.error(f"--results: no such file {path!r}")
    args.argv = sys.argv[1:] if input_args is None else list(input_args)
    return args


def row_specs(command: str) -> dict[str, str]:
    """``{row name: spec}`` from an evaluate.py command line (its ``--row NAME=SPEC`` flags)."""
    argv = shlex.split(command)
    flags = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--row"]
    flags += [a.split("=", 1)[1] for a in argv if a.startswith("--row=")]
    return dict(f.split("=", 1) for f in flags)


def same_cases(a: dict, b: dict, tol: float = 1e-4) -> bool:
    """Whether two evaluations scored the same cases: the same case description, and reference lines (renders of
    the cases themselves, scored by the same instruments) that agree to ``tol`` (float noise across machines)."""
    keys = ("identity_similarity", "expression_error")
    refs_a, refs_b = a.get("reference_lines", {}), b.get("reference_lines", {})
    return (
        a.get("cases") == b.get("cases")
        and abs(a["same_person_identity_similarity"] - b["same_person_identity_similarity"]) <= tol
        and bool(common := refs_a.keys() & refs_b.keys())  # a line added later to the harness is not compared
        and all(abs(refs_a[n][k] - refs_b[n][k]) <= tol for n in common for k in keys)
    )


def merge_results(paths: list[str]) -> tuple[dict, dict[str, str], dict[str, str]]:
    """``(merged, specs, source)``: every evaluated row in ``paths`` as one results dict (``rows`` beside the shared
    reference lines and same-person similarity), each row's adapter spec and file. The files must share their
    reference lines (the same cases, seeds and instruments score them identically); a row name in two files must
    name one adapter."""
    rows, specs, source, first = {}, {}, {}, None
    for path in paths:
        res = json.loads(Path(path).read_text())
        if first is None:
            first = (path, res)
        elif not same_cases(first[1], res):
            raise ValueError(
                f"--results: {path} was not scored on the same cases as {first[0]} (cases, same-person similarity "
                "or reference lines differ); evaluate both rows with one training/evaluate.py setting"
            )
        for name, spec in row_specs(res["command"]).items():
            if name not in res["rows"]:
                continue
            if name in specs and specs[name] != spec:
                raise ValueError(
                    f"--results: row {name!r} is {specs[name]!r} in {source[name]} but {spec!r} in {path}"
                )
            rows[name], specs[name], source[name] = res["rows"][name], spec, path
    if not rows:
        raise ValueError(f"--results: no evaluated rows in {paths}")
    shared = ("cases", "same_person_identity_similarity", "reference_lines")
    return {"rows": rows, **{k: first[1][k] for k in shared if k in first[1]}}, specs, source


def write_report(rows: dict, specs: dict, source: dict, chosen: str, out: Path, command: str) -> None:
    best = min(r["expression_error"] for n, r in rows.items() if n in specs)
    lines = [
        "# The embedded default",
        "",
        f"Written by `{command}` (do not edit by hand). Rule (`targets.final_row`): among the non-oracle two-branch",
        "rows that keep at least 0.9 of the identity-only row's identity, the lowest expression error; among the rows",
        "within one standard error of it, the highest identity similarity.",
        "",
        "| row | adapter | identity similarity | expression error | from |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in sorted(rows.items(), key=lambda kv: kv[1]["expression_error"]):
        mark = "**" if name == chosen else ""
        lines.append(
            f"| {mark}{name}{mark} | `{specs[name]}` | {r['identity_similarity']:.3f} +- "
            f"{r.get('identity_similarity_se', float('nan')):.3f} | {r['expression_error']:.3f} +- "
            f"{r.get('expression_error_se', float('nan')):.3f} | `{source[name]}` |"
        )
    lines += ["", f"Shipped: **{chosen}** (`{specs[chosen]}`); lowest expression error among the rows: {best:.3f}."]
    record = {"command": command, "shipped_row": chosen, "exported_adapter": specs[chosen], "rows": specs}
    write_text_atomic(out / "shipped.json", json.dumps(record, indent=1) + "\n")
    write_text_atomic(out / "shipped.md", "\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> str:
    merged, specs, source = merge_results(args.results)
    rows = merged["rows"]
    chosen = targets.final_row(rows, specs)
    if not args.dry_run:
        from emojidiff_synthetic.load import EMOJIDIFF_DIR

        targets.export(specs[chosen], Path(args.export) if args.export else EMOJIDIFF_DIR)
    command = "python training/ship.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(rows, specs, source, chosen, Path(args.out), command)
    targets.write_targets(merged, [], Path(args.out), command, specs, name="shipped_targets")
    print(f"shipped {chosen}: {specs[chosen]}")
    return specs[chosen]


if __name__ == "__main__":
    main(parse_args())
