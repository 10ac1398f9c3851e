"""The results table of the synthetic world, end to end, resumable: every step is skipped once its output exists.

    python training/results.py --collection data/collection --work runs/r9 [--idi_rounds 2 --stream_rows image,both]

On another base (`--base`, a pipeline folder), every row trains and is evaluated on it and the pick is exported to
`--export` (the embedded default runs on the shipped base, so a new base ships by replacing both assets):

    python training/results.py --work runs/r10 --out docs/results/next --base runs/b8w/pipeline --export runs/r10/ship

The recipe (step counts, learning rates, loss weights, filters, evaluation sizes, seed) is a config file,
training/recipes/synthetic_results.json (or --recipe); a flag given on the command line overrides its value.

Rows (each a call into the stage scripts, with the train-side instruments of the world; every stage-1 run holds out
256 triplets and stops when their loss has not improved for 6 validations, or at --steps):
 1. stage 1 on same-identity pairs with the code stream (the train-side expression estimator as encoder);
 2. the same with the expression branch in all cross-attention layers (preset comparison);
 2b. row 1 fine-tuned with the face losses (expression and identity read back from the one-step x0 by the train-side
    instruments, train/face_losses.py);
 2c. stage 2 (ICA, training/train_ica.py) from row 2b: identity and alignment losses with ANI's timestep bound, the
    expression loss kept; --ica_fixed_bounds adds the same with hand-picked bounds instead of ANI's;
 2d. row 2b continued with the same losses (it had not converged), then with the expression loss weighted up
    (--face_loss_push_expression_weight);
 2e. stage 2 from row 2d's pushed adapter, its expression weight kept, without the alignment term by default
    (--ica_push_alignment_loss_weight): the chain the embedded default comes from
    (docs/results/experiments/ica_no_alignment; training/recipes/ica_no_alignment.sh runs its last step alone);
 3. stage 1 on oracle cross-identity pairs rendered directly (upper bound; reads the renderer's ground truth);
 4. --stream_rows: the same-identity row with the image stream and with both streams;
 5. --idi_rounds IDI rounds from row 1 (diffusion re-identification backend), each fine-tuning stage 1;
 6. evaluation of every row on the expression benchmark (training/evaluate.py) -> docs/results/, the targets of the
    expression-transfer issue -> docs/results/targets.md, and export of the best non-oracle row as the embedded
    default.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from emojidiff_pipeline.train.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import evaluate  # noqa: E402
from targets import best_adapter, export, write_targets  # noqa: E402

logger = logging.getLogger("results")
DETECTOR = "emojidiff_synthetic.load:train_detector"
SCORER = "emojidiff_synthetic.load:train_expression_scorer"
ENCODER = "emojidiff_synthetic.load:train_expression_encoder"
EXPRESSION_LOSS_MODEL = "emojidiff_synthetic.load:train_expression_loss_model"
IDENTITY_LOSS_MODEL = "emojidiff_synthetic.load:train_identity_loss_model"


RECIPE = HERE / "recipes" / "synthetic_results.json"  # the shipped recipe: every setting below but the paths


def load_recipe(path: str | Path, known: set[str]) -> dict:
    """The settings of a recipe file (JSON object: flag name without dashes -> value); a file that is not such an
    object, names a setting the driver does not have, or lacks one is refused by its path and the key."""
    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--recipe {str(path)!r} cannot be read as JSON ({err}).") from err
    if not isinstance(recipe, dict):
        raise ValueError(f"--recipe {str(path)!r} must hold a JSON object, got {type(recipe).__name__}.")
    unknown, missing = sorted(set(recipe) - known), sorted(known - set(recipe))
    if unknown or missing:
        raise ValueError(
            f"--recipe {str(path)!r} does not match the driver's settings: unknown {unknown}, missing {missing}."
        )
    return recipe


def refuse_non_pipeline(p: argparse.ArgumentParser, flag: str, folder: str) -> None:
    """`p.error` unless `folder` is a diffusers pipeline folder (it has a model_index.json)."""
    if not (Path(folder) / "model_index.json").is_file():
        p.error(f"{flag} {folder!r} is not a pipeline folder (no model_index.json)")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--recipe",
        default=str(RECIPE),
        help="JSON file with every setting below but the paths (default: the shipped recipe); flags override it",
    )
    p.add_argument("--collection", default="data/collection")
    p.add_argument("--work", default="runs/results")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--steps", type=int, help="most stage-1 steps per run (early stopping may end it)")
    p.add_argument("--all_layers_steps", type=int)
    p.add_argument("--oracle_steps", type=int)
    p.add_argument("--idi_steps", type=int, help="stage-1 steps after each IDI round (fine-tuning)")
    p.add_argument("--face_loss_steps", type=int, help="most steps of the face-loss fine-tuning row")
    p.add_argument("--face_loss_learning_rate", type=float)
    p.add_argument("--expression_loss_weight", type=float, help="see train_decoupled.py")
    p.add_argument("--identity_loss_weight", type=float, help="see train_decoupled.py")
    p.add_argument("--face_loss_max_timestep", type=int, help="see train_decoupled.py")
    p.add_argument(
        "--face_loss_continue_steps",
        type=int,
        help="most steps of the face-loss row's continuation with the same losses (row 2d)",
    )
    p.add_argument(
        "--face_loss_push_steps",
        type=int,
        help="most steps of the continuation's fine-tuning at --face_loss_push_expression_weight",
    )
    p.add_argument("--face_loss_push_expression_weight", type=float)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--lr_warmup_steps", type=int)
    p.add_argument("--face_loss_weight", type=float, help="see train_decoupled.py --face_loss_weight")
    p.add_argument("--ica_steps", type=int, help="most steps of the ICA row (stage 2, from the face-loss row)")
    p.add_argument("--ica_identity_loss_weight", type=float)
    p.add_argument("--ica_alignment_loss_weight", type=float)
    p.add_argument("--ica_push_steps", type=int, help="most steps of the ICA row from the pushed adapter (2e)")
    p.add_argument("--ica_push_alignment_loss_weight", type=float)
    p.add_argument(
        "--ica_fixed_bounds",
        help="comma-separated hand-picked timestep bounds: one ICA row each beside ANI's (e.g. 300,900)",
    )
    p.add_argument("--stream_rows", help="comma-separated extra streams to train: image, both")
    p.add_argument("--idi_rounds", type=int)
    p.add_argument("--pairs_per_round", type=int)
    p.add_argument("--max_expression_error", type=float, help="IDI filter (train-side estimator MAE)")
    p.add_argument("--min_identity_similarity", type=float, help="IDI filter (cosine to person B)")
    p.add_argument("--max_template_similarity", type=float, help="IDI filter (cosine to person A)")
    p.add_argument("--oracle_triplets", type=int)
    p.add_argument("--eval_identities", type=int)
    p.add_argument("--eval_templates", type=int)
    p.add_argument("--inference_steps", type=int)
    p.add_argument(
        "--base",
        default=None,
        help="the base pipeline folder every row trains and evaluates on (default: the shipped synthetic base); "
        "another base needs --export, since the embedded default runs on the shipped base",
    )
    p.add_argument("--export", default=None, help="folder for the embedded default (default: the package asset)")
    p.add_argument("--seed", type=int)
    paths = {"help", "recipe", "collection", "work", "out", "base", "export"}
    known = {a.dest for a in p._actions} - paths
    recipe_path = p.parse_known_args(input_args)[0].recipe
    try:
        p.set_defaults(**load_recipe(recipe_path, known))
    except ValueError as err:
        p.error(str(err))
    args = p.parse_args(input_args)
    try:
        args.ica_fixed_bounds = [int(t) for t in args.ica_fixed_bounds.split(",") if t]
    except ValueError:
        p.error(f"--ica_fixed_bounds takes comma-separated timesteps, got {args.ica_fixed_bounds!r}")
    positive = "steps all_layers_steps oracle_steps face_loss_steps face_loss_continue_steps face_loss_push_steps"
    positive += " ica_steps ica_push_steps batch_size eval_identities eval_templates inference_steps"
    for name in positive.split():
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.base is not None:
        refuse_non_pipeline(p, "--base", args.base)
        if args.export is None:
            p.error(f"--base {args.base!r} needs --export: the embedded default runs on the shipped base")
    args.stream_rows = [x for x in args.stream_rows.split(",") if x]
    if set(args.stream_rows) - {"image", "both"}:
        p.error(f"--stream_rows takes 'image' and/or 'both', got {args.stream_rows}")
    return args


def synthetic_stage1_run(
    collection: Path,
    output_dir: Path,
    seed: int = 0,
    max_steps: int = 6000,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    lr_warmup_steps: int = 100,
    base: str | Path | None = None,
):
    """Stage 1 in the synthetic world as the results rows run it (a TrainingRun) on `base` (a pipeline folder;
    default the shipped synthetic base): same-identity pairs from
    ``<collection>/train.jsonl``, the code stream (the train-side expression estimator), the expression-sensitive
    preset, the train-side recognizer, captions without expression words, 64 px, checkpoints every 250 steps, 256
    held-out triplets checked every 250 steps, stopping after 6 checks without a better loss."""
    from emojidiff_pipeline.train.run import AdapterSpec, FaceFrontEnd, Stage1Config, TrainingRun, TripletSource
    from emojidiff_synthetic.collection import EXPRESSION_WORDS
    from emojidiff_synthetic.instruments import identity_onnx_path
    from emojidiff_synthetic.load import BASE_DIR

    return TrainingRun(
        pretrained_model=str(BASE_DIR if base is None else base),
        output_dir=str(output_dir),
        resolution=64,
        data=TripletSource(
            same_identity_from=str(Path(collection) / "train.jsonl"),
            seed=seed,
            strip_prompt_words=tuple(EXPRESSION_WORDS),
        ),
        face=FaceFrontEnd(recognizer=str(identity_onnx_path("train"))),
        adapter=AdapterSpec(expression_streams="code", expression_encoder=ENCODER, seed=seed),
        config=Stage1Config(
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            lr_warmup_steps=lr_warmup_steps,
            checkpointing_steps=250,
            seed=seed,
            num_validation=256,
            validation_steps=250,
            early_stopping_patience=6,
        ),
    )


def train(run, out: Path, steps: int, ani=None) -> str:
    """Train `run` (a TrainingRun) into `out`, stage 1 or, with `ani` (an AniConfig), ICA: resumed from its latest
    checkpoint, skipped once its adapter exists. Returns the adapter folder."""
    from emojidiff_pipeline.train.run import train_ica_run, train_stage1_run

    if not (out / "adapter" / "config.json").exists():
        resume = "latest" if any(out.glob("checkpoint-*[0-9]")) else None
        run = run.replace(output_dir=str(out), resume_from_checkpoint=resume, config=dict(max_steps=steps))
        train_ica_run(run, ani) if ani is not None else train_stage1_run(run)
    return str(out / "adapter")


def seeded(run, seed: int):
    """`run` (a TrainingRun) with `seed` for its batch order, its new adapter weights and its training loop."""
    return run.replace(data=dict(seed=seed), adapter=dict(seed=seed), config=dict(seed=seed))


def face_loss_run(
    stage1_run, adapter: str, learning_rate: float, expression_weight: float, identity_weight: float, **losses
):
    """`stage1_run` (a TrainingRun) fine-tuning `adapter` with face losses read back by the train-side instruments
    (a fresh optimizer and warm-up); `losses` are further FaceLossConfig fields."""
    from emojidiff_pipeline.train.face_losses import FaceLossConfig

    config = FaceLossConfig(expression_weight=expression_weight, identity_weight=identity_weight, **losses)
    return stage1_run.replace(
        adapter=dict(path=adapter),
        config=dict(learning_rate=learning_rate, face_losses=config),
        expression_loss_model=EXPRESSION_LOSS_MODEL,
        identity_loss_model=IDENTITY_LOSS_MODEL,
    )


def idi_settings(rounds: int, pairs_per_round: int, steps: int, inference_steps: int, filters: tuple, **more):
    """IDISettings as the results rows run them: the train-side expression scorer, the diffusion re-identification
    swapper, `filters` = (max expression error, min identity similarity, max template similarity); `more`: further
    IDISettings fields (e.g. generation_batch_size)."""
    from emojidiff_pipeline.train.run import FilterConfig, IDISettings

    return IDISettings(
        expression_estimator=SCORER,
        rounds=rounds,
        pairs_per_round=pairs_per_round,
        steps_per_round=steps,
        num_inference_steps=inference_steps,
        filters=FilterConfig(*filters),
        **more,
    )


def idi_rows(same_identity_run, adapter: str, out: Path, settings) -> dict[str, str]:
    """IDI rounds (`settings`, an IDISettings) under `out`, generating first with `adapter` and retraining with
    `same_identity_run`'s recipe (the synthetic detector finds the generated faces). Resumable (see run_idi).
    Returns {"stage1_idi_round_<r>": adapter folder}."""
    from emojidiff_pipeline.train.run import run_idi

    run = same_identity_run.replace(
        output_dir=str(out),
        face=dict(detector=DETECTOR),
        adapter=dict(path=adapter),
        config=dict(max_steps=settings.steps_per_round),
    )
    run_idi(run, settings)
    return {f"stage1_idi_round_{r}": str(out / f"round-{r}" / "stage1" / "adapter") for r in range(settings.rounds)}


def main(args: argparse.Namespace) -> dict:
    from emojidiff_pipeline.train.run import AniConfig, TrainingRun
    from emojidiff_synthetic.load import EMOJIDIFF_DIR
    from emojidiff_synthetic.oracle import build_oracle_triplets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work, collection = Path(args.work), Path(args.collection)
    same_identity = synthetic_stage1_run(
        collection, work, args.seed, args.steps, args.batch_size, args.learning_rate, args.lr_warmup_steps, args.base
    ).replace(config=dict(face_loss_weight=args.face_loss_weight))

    rows = {"base": "base"}
    rows["stage1_same_identity_code"] = train(same_identity, work / "same_identity_code", args.steps)
    rows["identity_only"] = rows["stage1_same_identity_code"] + "@id_only"
    all_layers = same_identity.replace(adapter=dict(expression_layers="all"))
    rows["same_identity_code_all_layers"] = train(
        all_layers, work / "same_identity_code_all_layers", args.all_layers_steps
    )

    def face_losses(adapter: str, expression_weight: float, identity_weight: float, **losses) -> TrainingRun:
        return face_loss_run(
            same_identity, adapter, args.face_loss_learning_rate, expression_weight, identity_weight, **losses
        )

    def face_loss_row(out: Path, steps: int, adapter: str, expression_weight: float, seed: int) -> str:
        run = face_losses(
            adapter, expression_weight, args.identity_loss_weight, max_timestep=args.face_loss_max_timestep
        )
        return train(seeded(run, seed), out, steps)

    rows["stage1_same_identity_code_face_losses"] = face_loss_row(
        work / "same_identity_code_face_losses",
        args.face_loss_steps,
        rows["stage1_same_identity_code"],
        args.expression_loss_weight,
        args.seed,
    )
    # 2d: the face-loss row had not converged at its last step: continued with the same losses, then pushed harder
    rows["face_losses_continued"] = face_loss_row(
        work / "face_losses_continued",
        args.face_loss_continue_steps,
        rows["stage1_same_identity_code_face_losses"],
        args.expression_loss_weight,
        args.seed + 1,
    )
    rows["face_losses_expression_push"] = face_loss_row(
        work / "face_losses_expression_push",
        args.face_loss_push_steps,
        rows["face_losses_continued"],
        args.face_loss_push_expression_weight,
        args.seed + 1,
    )
    # stage 2 from the face-loss row, with its expression loss kept
    ica = face_losses(
        rows["stage1_same_identity_code_face_losses"],
        args.expression_loss_weight,
        args.ica_identity_loss_weight,
        alignment_weight=args.ica_alignment_loss_weight,
    )
    rows["stage2_ica"] = train(ica, work / "ica", args.ica_steps, AniConfig(seed=args.seed))
    for bound in args.ica_fixed_bounds:
        fixed = AniConfig(seed=args.seed, fixed_max_timestep=bound)
        rows[f"stage2_ica_fixed_t{bound}"] = train(ica, work / f"ica_fixed_t{bound}", args.ica_steps, fixed)
    push_ica = face_losses(
        rows["face_losses_expression_push"],
        args.face_loss_push_expression_weight,
        args.ica_identity_loss_weight,
        alignment_weight=args.ica_push_alignment_loss_weight,
    )
    rows["stage2_ica_from_push"] = train(
        push_ica, work / "ica_from_push", args.ica_push_steps, AniConfig(seed=args.seed)
    )
    if not (work / "oracle_data" / "triplets.jsonl").exists():
        build_oracle_triplets(collection, work / "oracle_data", args.oracle_triplets, seed=args.seed)
    oracle = same_identity.replace(
        data=dict(triplets=str(work / "oracle_data" / "triplets.jsonl"), same_identity_from=None)
    )
    rows["stage1_oracle_code"] = train(oracle, work / "oracle_code", args.oracle_steps)
    for stream in args.stream_rows:
        streams = same_identity.replace(
            adapter=dict(expression_streams=stream, expression_encoder=None if stream == "image" else ENCODER)
        )
        rows[f"stage1_same_identity_{stream}"] = train(streams, work / f"same_identity_{stream}", args.steps)
    if args.idi_rounds:
        filters = (args.max_expression_error, args.min_identity_similarity, args.max_template_similarity)
        idi = idi_settings(args.idi_rounds, args.pairs_per_round, args.idi_steps, args.inference_steps, filters)
        rows.update(idi_rows(same_identity, rows["stage1_same_identity_code"], work / "idi", idi))
    row_flags = [a for name, spec in rows.items() for a in ("--row", f"{name}={spec}")]
    eval_sizes = f"--num_identities {args.eval_identities} --num_templates {args.eval_templates}"
    eval_sizes += f" --steps {args.inference_steps}"
    base_flag = [] if args.base is None else ["--pretrained_model", str(args.base)]
    eval_args = evaluate.parse_args([*row_flags, *base_flag, "--out", args.out, *eval_sizes.split()])
    done = Path(args.out) / "results.json"
    eval_command = "python training/evaluate.py " + " ".join(shlex.quote(a) for a in eval_args.argv)
    if done.exists() and json.loads(done.read_text()).get("command") == eval_command:
        results = json.loads(done.read_text())  # this exact evaluation already ran (it is deterministic)
    else:
        results = evaluate.main(eval_args)
    shipped = best_adapter(results, rows)
    export(shipped, Path(args.export) if args.export else EMOJIDIFF_DIR)
    command = "python training/results.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_text_atomic(
        Path(args.out) / "pipeline.json",
        json.dumps({"command": command, "exported_adapter": shipped, "rows": rows}, indent=1),
    )
    rounds = [
        json.loads((work / "idi" / f"round-{r}" / "data" / "round_stats.json").read_text())
        for r in range(args.idi_rounds)
    ]
    write_targets(results, rounds, Path(args.out), command)
    write_training_summary(rows, Path(args.out), command)
    return results


def training_summary(run_dir: Path) -> dict:
    """Steps, wall-clock and the held-out validation of one stage-1 run folder (its loss_log / val_log)."""

    def lines(name):
        path = run_dir / name
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    log, val = lines("loss_log.jsonl"), lines("val_log.jsonl")
    best = min(val, key=lambda r: r.get("objective", r["loss"])) if val else None
    return {
        "steps": log[-1]["step"] + 1 if log else 0,
        "wall_clock_min": round(log[-1]["elapsed_s"] / 60, 1) if log and "elapsed_s" in log[-1] else None,
        "best_step": best["step"] + 1 if best else None,
        "validation_loss": best["loss"] if best else None,
        "template_swap_gap": best["loss_template_swap"] / best["loss"] - 1 if best else None,
        "no_expression_gap": best["loss_no_expression"] / best["loss"] - 1 if best else None,
        "validations_after_best": len(val) - 1 - val.index(best) if best else None,
    }


def write_training_summary(rows: dict[str, str], out: Path, command: str) -> None:
    """training.md: for every trained row, how long it trained and where its held-out loss stopped improving."""
    lines = [
        "# Training of the synthetic rows",
        "",
        f"Written by `{command}` from each run's `loss_log.jsonl` and "
        "`val_log.jsonl` (do not edit by hand). The shipped adapter of a run is its best held-out one.",
        "",
        "| row | steps | wall-clock (min) | best step | held-out loss | template swap | no expression | "
        "validations after best |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, spec in rows.items():
        if spec == "base" or "@" in spec:
            continue
        t = training_summary(Path(spec).parent)
        fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
        lines.append(
            f"| {name} | {t['steps']} | {fmt(t['wall_clock_min'], '')} | {fmt(t['best_step'], '')} | "
            f"{fmt(t['validation_loss'], '.4f')} | {fmt(t['template_swap_gap'], '+.2%')} | "
            f"{fmt(t['no_expression_gap'], '+.2%')} | {fmt(t['validations_after_best'], '')} |"
        )
    write_text_atomic(out / "training.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(parse_args())
