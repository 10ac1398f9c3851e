"""Choose the embedded default from rows already evaluated on the same benchmark, and export it.

    python training/ship.py --results docs/results/experiments/factor_push/results.json \\
        --results docs/results/experiments/ica_no_alignment/results.json [--export FOLDER | --ship_base] [--dry_run]

Rows trained outside the results driver (experiments) are evaluated by training/evaluate.py into their own folders;
this reads those ``results.json`` files, refuses files that were not scored on the same cases (their reference
lines must agree), applies the driver's rule (``targets.final_row``: lowest expression error, then the highest
identity within one standard error of it) and exports the chosen adapter as the package's embedded default.
An adapter runs on the base it was trained on: the files must have been scored on one base (their recorded
``base_model`` digest), and exporting to the package when that base is not the package's own is refused unless
``--ship_base`` replaces the package's base with it too. Writes ``docs/results/shipped.json`` and ``shipped.md``
(the candidates, the rule, the base and the choice) and ``shipped_targets.json`` / ``.md`` (the
expression-transfer issue's targets, measured on the chosen row).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
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
    p.add_argument(
        "--ship_base",
        action="store_true",
        help="the rows ran on another base than the package's: replace the package's base with it as well",
    )
    args = p.parse_args(input_args)
    if args.ship_base and args.export is not None:
        p.error(
            "--ship_base replaces the package's base, which goes with the package's embedded default: "
            f"it does not apply with --export {args.export!r}"
        )
    for path in args.results:
        if not Path(path).is_file():
            p.error(f"--results: no such file {path!r}")
    args.argv = sys.argv[1:] if input_args is None else list(input_args)
    return args


def flag_values(command: str, flag: str) -> list[str]:
    """The values of ``flag`` in a command line, both spellings (``--flag VALUE`` and ``--flag=VALUE``)."""
    argv = shlex.split(command)
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return values + [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]


def row_specs(command: str) -> dict[str, str]:
    """``{row name: spec}`` from an evaluate.py command line (its ``--row NAME=SPEC`` flags)."""
    return dict(f.split("=", 1) for f in flag_values(command, "--row"))


def results_base(res: dict) -> dict:
    """``{"pretrained_model", "digest"}`` of the base a results file was scored on: its recorded ``base_model``,
    else (files written before evaluate.py recorded it) its command's ``--pretrained_model`` (default: the
    package's base) digested now."""
    from emojidiff_pipeline.evaluation import base_record
    from emojidiff_synthetic import load

    if "base_model" in res:
        return res["base_model"]
    named = flag_values(res["command"], "--pretrained_model")
    return base_record(named[-1] if named else load.BASE_DIR)


def same_base(a: dict, b: dict) -> bool:
    """One base: the same folder content, or (a Hub id, no digest) the same name."""
    if a["digest"] is None or b["digest"] is None:
        return a["digest"] is None and b["digest"] is None and a["pretrained_model"] == b["pretrained_model"]
    return a["digest"] == b["digest"]


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
    reference lines, same-person similarity and ``base_model``), each row's adapter spec and file. The files must
    share their reference lines (the same cases, seeds and instruments score them identically) and their base; a
    row name in two files must name one adapter."""
    rows, specs, source, first = {}, {}, {}, None
    for path in paths:
        res = json.loads(Path(path).read_text())
        res["base_model"] = results_base(res)
        if first is None:
            first = (path, res)
        elif not same_cases(first[1], res):
            raise ValueError(
                f"--results: {path} was not scored on the same cases as {first[0]} (cases, same-person similarity "
                "or reference lines differ); evaluate both rows with one training/evaluate.py setting"
            )
        elif not same_base(first[1]["base_model"], res["base_model"]):
            raise ValueError(
                f"--results: {path} was scored on base {res['base_model']} but {first[0]} on "
                f"{first[1]['base_model']}; an adapter runs on the base it was trained on, so ship from one base"
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
    shared = ("cases", "same_person_identity_similarity", "reference_lines", "base_model")
    return {"rows": rows, **{k: first[1][k] for k in shared if k in first[1]}}, specs, source


def write_report(rows: dict, specs: dict, source: dict, chosen: str, base: dict, out: Path, command: str) -> None:
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
    lines += [
        "",
        f"Shipped: **{chosen}** (`{specs[chosen]}`); lowest expression error among the rows: {best:.3f}.",
        f"Every row was scored on the base `{base['pretrained_model']}` (folder digest {base['digest']}).",
    ]
    record = {
        "command": command,
        "shipped_row": chosen,
        "exported_adapter": specs[chosen],
        "base_model": base,
        "rows": specs,
    }
    write_text_atomic(out / "shipped.json", json.dumps(record, indent=1) + "\n")
    write_text_atomic(out / "shipped.md", "\n".join(lines) + "\n")


def check_package_base(base: dict, ship_base: bool) -> bool:
    """Whether the package's base must be replaced by `base` for the embedded default to run on what it was trained
    on; refused (ValueError) when it must and `ship_base` is not set."""
    from emojidiff_pipeline.evaluation import base_record
    from emojidiff_synthetic import load

    package = base_record(load.BASE_DIR)
    if same_base(base, package):
        return False
    if base["digest"] is None:
        raise ValueError(f"--results: the rows ran on {base['pretrained_model']!r}, not a local pipeline folder")
    if not ship_base:
        raise ValueError(
            f"--results: the rows ran on the base {base['pretrained_model']!r} (digest {base['digest']}), not the "
            f"package's ({load.BASE_DIR}, digest {package['digest']}); pass --ship_base to replace the package's "
            "base with it as well, or --export to a folder"
        )
    return True


def replace_package_base(base: dict) -> None:
    """Copy the base folder over the package's base (one rename); refuses a folder changed since it was scored."""
    from emojidiff_pipeline.evaluation import folder_digest
    from emojidiff_pipeline.train.atomic import atomic_path
    from emojidiff_synthetic import load

    source = Path(base["pretrained_model"])
    if (now := folder_digest(source)) != base["digest"]:
        raise ValueError(
            f"--ship_base: {source} changed since the rows were scored on it (digest {now}, "
            f"scored {base['digest']}); evaluate again"
        )
    with atomic_path(load.BASE_DIR) as tmp:
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(".*"))
    print(f"replaced the package's base {load.BASE_DIR} with {source}")


def main(args: argparse.Namespace) -> str:
    from emojidiff_synthetic import load

    merged, specs, source = merge_results(args.results)
    rows, base = merged["rows"], merged["base_model"]
    chosen = targets.final_row(rows, specs)
    new_base = args.export is None and check_package_base(base, args.ship_base)
    if not args.dry_run:
        if new_base:
            replace_package_base(base)
        targets.export(specs[chosen], Path(args.export) if args.export else load.EMOJIDIFF_DIR)
    command = "python training/ship.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(rows, specs, source, chosen, base, Path(args.out), command)
    targets.write_targets(merged, [], Path(args.out), command, specs, name="shipped_targets")
    print(f"shipped {chosen}: {specs[chosen]}")
    return specs[chosen]


if __name__ == "__main__":
    try:
        main(parse_args())
    except ValueError as err:  # a refusal of the inputs: one line naming the argument, not a traceback
        sys.exit(f"ship.py: error: {err}")
