"""IDI rounds (ID-irrelevant Data Iteration) from a generator adapter, against a matched control: the same
generator fine-tuned the same steps, at the same settings, on same-identity pairs instead. Then the 16 x 64
harness on the generator, the control and every round, and the rounds' filter statistics. Resumable: finished
shards, rounds and rows are skipped, an interrupted fine-tuning continues from its latest checkpoint.

    python training/recipes/idi_rounds.py runs/idi docs/results/experiments/idi_rounds

`--data_only` runs one round's generation and filtering alone (no control, no fine-tuning, no evaluation): the
scores every pair got before filtering, to set the thresholds from (a generator's yield at each one):

    python training/recipes/idi_rounds.py runs/idi_row1 docs/results/experiments/idi_rounds/row1_generator \
        --generator runs/idi/same_identity_code/adapter --data_only --pairs_per_round 256

The generator defaults to the embedded model (the best non-oracle row, trained on same-identity pairs only): the
plain stage-1 row (docs/results/results.md, 0.135 expression error) makes too few acceptable pairs to retrain on
(see the experiments notes). Each round generates `--pairs_per_round` cross-identity pairs with the current
adapter (prompts without expression words), re-identifies them toward the reference (diffusion backend), keeps
those that pass the filters (train-side instruments) and fine-tunes on every round's kept pairs so far, starting
from the round's generation adapter. The IDI target: identity leakage below the control's at no more than +10 %
expression error.
"""

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import compare  # noqa: E402
import evaluate  # noqa: E402
import results  # noqa: E402

from emojidiff_pipeline.train.atomic import write_text_atomic  # noqa: E402

EXPRESSION_THRESHOLDS = (0.04, 0.06, 0.08, 0.1, 0.12)  # yields reported at these filter settings


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="run folder (control/, idi/round-r/)")
    p.add_argument("out", type=Path, help="evaluation folder (results.md, results.json, idi_rounds.json)")
    p.add_argument("--generator", default=None, help="the adapter round 0 generates with (default: embedded model)")
    p.add_argument("--collection", type=Path, default=REPO / "data" / "collection")
    p.add_argument("--recipe", type=Path, default=results.RECIPE, help="the results driver's recipe file")
    p.add_argument("--rounds", type=int, default=None, help="IDI rounds (default 2; 1 with --data_only)")
    p.add_argument("--pairs_per_round", type=int, default=1600)
    p.add_argument("--generation_batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000, help="most fine-tuning steps per round, and of the control")
    p.add_argument("--learning_rate", type=float, default=3e-4, help="fine-tuning learning rate (both arms)")
    p.add_argument("--max_expression_error", type=float, default=0.08)
    p.add_argument("--min_identity_similarity", type=float, default=0.4)
    p.add_argument("--max_template_similarity", type=float, default=0.3)
    p.add_argument("--num_validation", type=int, default=64, help="kept IDI pairs held out per round's fine-tuning")
    p.add_argument("--data_only", action="store_true", help="one round's generation and filtering, nothing else")
    args = p.parse_args(argv)
    args.command = "python training/recipes/idi_rounds.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.rounds is None:
        args.rounds = 1 if args.data_only else 2
    for name in ("rounds", "pairs_per_round", "generation_batch_size", "steps", "num_validation"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.data_only and args.rounds != 1:
        p.error(
            "--data_only runs one round (round r > 0 generates with round r-1's fine-tuned adapter), got "
            f"--rounds {args.rounds}"
        )
    if args.generator is None:
        from emojidiff_synthetic.load import EMOJIDIFF_DIR

        embedded, here = (EMOJIDIFF_DIR / "emoji_adapter").resolve(), Path.cwd().resolve()
        # relative where it can be: the reports print this path in their commands
        args.generator = str(embedded.relative_to(here) if embedded.is_relative_to(here) else embedded)
    if not (Path(args.generator) / "config.json").is_file():
        p.error(f"--generator: {args.generator!r} is not an adapter folder (no config.json)")
    return args


def filter_statistics(round_dir: Path, thresholds=EXPRESSION_THRESHOLDS) -> dict:
    """What a round's generations scored before filtering (every pair's train-side scores, from its shard stats):
    quartiles of each score and the yield had the expression threshold been each of `thresholds`, with the round's
    identity filters kept."""
    stats = [s for f in sorted((round_dir / "shards").glob("*.stats.json")) for s in json.loads(f.read_text())]
    scored = [s for s in stats if "expression_error" in s]
    if not scored:
        return {"pairs": len(stats), "scored": 0}
    expression = np.array([s["expression_error"] for s in scored])
    identity_ok = np.array(
        [not {"identity_to_reference", "template_identity_leak"} & set(s["rejected"]) for s in scored]
    )
    quartiles = {
        name: np.percentile([s[name] for s in scored], [25, 50, 75]).round(4).tolist()
        for name in ("expression_error", "identity_similarity", "template_similarity")
    }
    return {
        "pairs": len(stats),
        "scored": len(scored),
        "quartiles": quartiles,
        "yield_at_expression_threshold": {
            str(t): round(float(((expression <= t) & identity_ok).sum() / len(stats)), 4) for t in thresholds
        },
    }


def compare_rows(rows: dict[str, dict], row: str, against: str) -> dict:
    """`row` against the row `against` (evaluated rows' scores on the same cases): identity leakage difference with
    its standard error (``compare.compare``: paired over templates when both rows hold per-template leakage, else
    that of two independent means), expression error ratio, and the IDI target (leakage lower, at no more than
    +10 % expression error)."""
    a, b = rows[row], rows[against]
    scores = compare.compare(a, b)
    leakage, ratio = scores["identity_leakage"], a["expression_error"] / b["expression_error"]
    return {
        "row": row,
        "against": against,
        "identity_leakage_difference": leakage["difference"],
        "identity_leakage_difference_se": leakage["se"],
        "leakage_se_paired": leakage["paired"],
        "expression_error_ratio": round(ratio, 4),
        "identity_similarity_difference": scores["identity_similarity"]["difference"],
        "target_met": bool(a["identity_leakage"] < b["identity_leakage"] and ratio <= 1.1),
    }


def write_report(summary: dict, out: Path) -> None:
    """idi_rounds.json and idi_rounds.md: the filters, each round's yield and pre-filter scores, and every round row
    against the generator and the matched control."""
    write_text_atomic(out / "idi_rounds.json", json.dumps(summary, indent=1))
    f = summary["filters"]
    lines = [
        "# IDI rounds" + (" against a matched control" if summary.get("comparisons") else ": generation and filters"),
        "",
        f"Written by `{summary['command']}` (do not edit by hand). Filters (train-side instruments): expression error "
        f"<= {f['max_expression_error']}, identity similarity to the reference >= {f['min_identity_similarity']}, "
        f"to the template person <= {f['max_template_similarity']}.",
        "",
        "| round | pairs | accepted | yield | rejected by | accepted per compute minute | expression error quartiles "
        "before filtering | yield had the expression threshold been "
        + ", ".join(map(str, EXPRESSION_THRESHOLDS))
        + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, r in enumerate(summary["rounds"]):
        quartiles = r["scores"].get("quartiles", {}).get("expression_error", [])
        yields = r["scores"].get("yield_at_expression_threshold", {})
        lines.append(
            f"| {k} | {r['pairs']} | {r['accepted']} | {r['yield']:.3f} | {r['rejected_by']} | "
            f"{r['accepted_per_compute_minute']} | {' / '.join(f'{q:.3f}' for q in quartiles)} | "
            + ", ".join(f"{v:.3f}" for v in yields.values())
            + " |"
        )
    comparisons = summary.get("comparisons", [])
    if comparisons:
        lines += [
            "",
            "| row | against | identity leakage difference | expression error ratio | identity similarity "
            "difference | IDI target met |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
    for c in comparisons:
        lines.append(
            f"| {c['row']} | {c['against']} | {c['identity_leakage_difference']:+.4f} +- "
            f"{compare.se_text(c['identity_leakage_difference_se'])}{' (paired)' if c['leakage_se_paired'] else ''} | "
            f"{c['expression_error_ratio']:.3f} | "
            f"{c['identity_similarity_difference']:+.4f} | {'yes' if c['target_met'] else 'no'} |"
        )
    write_text_atomic(out / "idi_rounds.md", "\n".join(lines) + "\n")


def main(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    r = json.loads(Path(args.recipe).read_text())
    same_identity = results.synthetic_stage1_run(
        args.collection, args.work, r["seed"], args.steps, r["batch_size"], args.learning_rate, r["lr_warmup_steps"]
    ).replace(config=dict(face_loss_weight=r["face_loss_weight"], cache_dir=str(args.work / "cache")))
    rows = {"generator": args.generator}
    if not args.data_only:
        control = same_identity.replace(adapter=dict(path=args.generator))
        rows["same_identity_finetune"] = results.train(control, args.work / "control", args.steps)
    filters = (args.max_expression_error, args.min_identity_similarity, args.max_template_similarity)
    settings = results.idi_settings(
        args.rounds,
        args.pairs_per_round,
        0 if args.data_only else args.steps,
        r["inference_steps"],
        filters,
        generation_batch_size=args.generation_batch_size,
    )
    idi = same_identity.replace(config=dict(num_validation=args.num_validation, validation_steps=100))
    rows.update(results.idi_rows(idi, args.generator, args.work / "idi", settings))
    rounds = []
    for k in range(args.rounds):
        data = args.work / "idi" / f"round-{k}" / "data"
        rounds.append({**json.loads((data / "round_stats.json").read_text()), "scores": filter_statistics(data)})
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "command": args.command,
        "filters": dataclasses.asdict(settings.filters),
        "rounds": rounds,
    }
    write_report(summary, args.out)  # the rounds now; the comparisons once the rows are evaluated
    if args.data_only:
        return summary
    sizes = ["--num_identities", str(r["eval_identities"]), "--num_templates", str(r["eval_templates"])]
    row_flags = [a for name, path in rows.items() for a in ("--row", f"{name}={path}")]
    eval_args = [*row_flags, "--out", str(args.out), *sizes, "--steps", str(r["inference_steps"])]
    scores = evaluate.main(evaluate.parse_args(eval_args))
    idi_names = [name for name in rows if name.startswith("stage1_idi_round_")]
    summary["comparisons"] = [
        compare_rows(scores["rows"], name, against)
        for name in idi_names
        for against in ("same_identity_finetune", "generator")
    ]
    write_report(summary, args.out)
    trained = {name: path for name, path in rows.items() if name != "generator"}
    results.write_training_summary(trained, args.out, args.command)  # training.md: steps, time, best held-out
    return scores


if __name__ == "__main__":
    main(parse_args())
