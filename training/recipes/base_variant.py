"""Rows 1 and 2b of training/results.py (stage 1 on same-identity pairs with the code stream, then its face-loss
fine-tuning; with --chain also the pushed row and ICA from it) on another synthetic base model, with the shipped
recipe's settings, then the 16 x 64 harness on those rows with that base. Resumable: a finished row is skipped, an
interrupted one continues from its latest checkpoint.

    python training/recipes/base_variant.py runs/base_attn16/pipeline runs/attn16 docs/results/experiments/attn16

The base with cross-attention at 16x16 (synthetic/scripts/base_attn16.sh) asks whether gaze and brows transfer
when the expression branch can attend at one cell per 4 px; compare with the same two rows on the shipped base
(docs/results/results.md: stage 1 0.135, face losses 0.093; gaze 0.10-0.13). The expression branch takes the
`expression_sensitive` preset, which on that UNet includes the 16x16 up block.

A shorter matched comparison (stage 1 only, the same step count on each base, each evaluated with its own base;
docs/results/experiments/attn16_matched, bases from synthetic/scripts/base_attn16.sh's warm start and its control):

    python training/recipes/base_variant.py runs/a16w/pipeline runs/m_a16 \
        docs/results/experiments/attn16_matched/attn16 --stage1_steps 3000 --stage1_only

and its face-loss rows from those stage-1 adapters (docs/results/experiments/attn16_face_losses), the same
face-loss steps on each base:

    python training/recipes/base_variant.py runs/a16w/pipeline runs/m_a16 \
        docs/results/experiments/attn16_face_losses/attn16 --stage1_steps 3000 --face_loss_steps 2000

`--chain` goes on to the rest of the embedded default's chain on that base (rows 2d and 2e of training/results.py,
without the continuation): the face-loss row pushed at the recipe's expression weight (`--push_steps`), then ICA
from the pushed adapter with that weight kept and no alignment term (`--ica_steps`), so a new base can be judged by
the row that would ship from it (docs/results/experiments/base_chain):

    python training/recipes/base_variant.py runs/a8w/pipeline runs/m_a8 \
        docs/results/experiments/base_chain --stage1_steps 3000 --face_loss_steps 2000 --chain
"""

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "training"))
import evaluate  # noqa: E402
import results  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the base pipeline folder the rows train and evaluate on")
    p.add_argument("work", type=Path, help="run folder (stage1/, face_losses/; with --chain expression_push/, ica_*/)")
    p.add_argument("out", help="evaluation folder (results.md, results.json)")
    p.add_argument("--collection", type=Path, default=REPO / "data" / "collection")
    p.add_argument("--recipe", type=Path, default=results.RECIPE, help="the results driver's recipe file")
    p.add_argument("--stage1_steps", type=int, default=None, help="stage-1 steps (default: the recipe's)")
    p.add_argument("--face_loss_steps", type=int, default=None, help="face-loss steps (default: the recipe's)")
    p.add_argument("--stage1_only", action="store_true", help="train and evaluate row 1 only")
    p.add_argument("--chain", action="store_true", help="then the pushed row and ICA from it (rows 2d, 2e)")
    p.add_argument("--push_steps", type=int, default=None, help="pushed row's steps (default: the recipe's)")
    p.add_argument("--ica_steps", type=int, default=None, help="ICA steps from the pushed row (default: the recipe's)")
    args = p.parse_args(argv)
    args.command = "python training/recipes/base_variant.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    for name in ("stage1_steps", "face_loss_steps", "push_steps", "ica_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.stage1_only and args.face_loss_steps is not None:
        p.error("--face_loss_steps: --stage1_only trains no face-loss row")
    if args.stage1_only and args.chain:
        p.error("--chain: --stage1_only trains no face-loss row to go on from")
    if not args.chain and (args.push_steps is not None or args.ica_steps is not None):
        p.error("--push_steps / --ica_steps: pass --chain to train the pushed and ICA rows")
    results.refuse_non_pipeline(p, "base:", args.base)
    return args


def main(args: argparse.Namespace) -> dict:
    from emojidiff_pipeline.train.run import AniConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    r = json.loads(Path(args.recipe).read_text())
    steps = args.stage1_steps or r["steps"]
    stage1 = results.synthetic_stage1_run(
        args.collection, args.work, r["seed"], steps, r["batch_size"], r["learning_rate"], r["lr_warmup_steps"]
    ).replace(pretrained_model=str(args.base), config=dict(face_loss_weight=r["face_loss_weight"]))
    rows = {"stage1_same_identity_code": results.train(stage1, args.work / "stage1", steps)}

    def face_losses(adapter: str, expression_weight: float, identity_weight: float, **losses):
        return results.face_loss_run(
            stage1, adapter, r["face_loss_learning_rate"], expression_weight, identity_weight, **losses
        )

    if not args.stage1_only:
        face = face_losses(
            rows["stage1_same_identity_code"],
            r["expression_loss_weight"],
            r["identity_loss_weight"],
            max_timestep=r["face_loss_max_timestep"],
        )
        rows["stage1_same_identity_code_face_losses"] = results.train(
            face, args.work / "face_losses", args.face_loss_steps or r["face_loss_steps"]
        )
    if args.chain:  # rows 2d (without the continuation) and 2e of training/results.py
        push_weight = r["face_loss_push_expression_weight"]
        push = face_losses(
            rows["stage1_same_identity_code_face_losses"],
            push_weight,
            r["identity_loss_weight"],
            max_timestep=r["face_loss_max_timestep"],
        )
        rows["face_losses_expression_push"] = results.train(
            results.seeded(push, r["seed"] + 1),
            args.work / "expression_push",
            args.push_steps or r["face_loss_push_steps"],
        )
        ica = face_losses(
            rows["face_losses_expression_push"],
            push_weight,
            r["ica_identity_loss_weight"],
            alignment_weight=r["ica_push_alignment_loss_weight"],
        )
        name = "ica_no_alignment" if r["ica_push_alignment_loss_weight"] == 0 else "ica_from_push"
        rows[f"stage2_{name}"] = results.train(
            ica, args.work / name, args.ica_steps or r["ica_push_steps"], AniConfig(seed=r["seed"])
        )
    sizes = ["--num_identities", str(r["eval_identities"]), "--num_templates", str(r["eval_templates"])]
    row_flags = [a for name, path in rows.items() for a in ("--row", f"{name}={path}")]
    eval_args = [*row_flags, "--pretrained_model", str(args.base), "--out", args.out, *sizes]
    scores = evaluate.main(evaluate.parse_args([*eval_args, "--steps", str(r["inference_steps"])]))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results.write_training_summary(rows, Path(args.out), args.command)  # training.md: steps, time, best held-out
    return scores


if __name__ == "__main__":
    main(parse_args())
