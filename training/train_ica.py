"""Stage 2 of EmojiDiff: ICA (ID-enhanced Contrast Alignment) with ANI, fine-tuning a stage-1 adapter.

    accelerate launch training/train_ica.py --pretrained_model <pipeline> --adapter runs/stage1/adapter \
        --triplets triplets.jsonl --recognizer arcface.onnx --output_dir runs/ica --max_steps 2000 \
        --identity_loss_model my_models:arcface_torch --identity_loss_weight 1 --alignment_loss_weight 1 \
        --identity_anchor reference [--expression_loss_model my_models:expression --expression_loss_weight 1]

The stage-1 loop (same cache, checkpoints, exact resume, validation) with timesteps drawn in [0, t_ani] and the face
losses of emojidiff_pipeline.train.face_losses on the one-step x0 with the expression branch on and off.
ANI picks t_ani: the largest of --ani_candidates whose one-step x0 keeps the target's identity (cosine by
--identity_loss_model) >= --ani_threshold on --ani_calibration_size training triplets; it is written to
<output_dir>/ani.json and into every adapter folder of the run. See emojidiff_pipeline.train.ica.
"""

from __future__ import annotations

import argparse
import logging

import stage_flags as flags

logger = logging.getLogger("train_ica")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    flags.add_run_args(p)
    flags.add_adapter_args(p)
    flags.add_face_args(p)
    flags.add_stage1_args(p)
    g = p.add_argument_group("ANI (adaptive noise inversion)")
    g.add_argument("--ani_threshold", type=float, default=0.6, help="identity cosine the one-step x0 must keep")
    g.add_argument(
        "--ani_candidates",
        default="100,200,300,400,500,600,700,800,900",
        help="comma-separated candidate upper bounds of t, ascending",
    )
    g.add_argument("--ani_calibration_size", type=int, default=64)
    g.add_argument(
        "--fixed_max_timestep",
        type=int,
        default=None,
        help="skip ANI: train with timesteps in [0, this] (a hand-picked bound, for comparison rows)",
    )
    args = p.parse_args(input_args)
    flags.check_run_args(p, args)
    flags.check_stage1_args(p, args)
    if not args.adapter:
        p.error("ICA fine-tunes a stage-1 adapter: pass --adapter <stage-1 adapter folder>")
    if not args.identity_loss_model:
        p.error("ICA needs --identity_loss_model (a differentiable face recognizer, module:factory)")
    if args.identity_loss_weight == 0 and args.alignment_loss_weight == 0:
        p.error("ICA needs --identity_loss_weight and/or --alignment_loss_weight > 0")
    try:
        args.ani_candidates = tuple(int(x) for x in args.ani_candidates.split(","))
    except ValueError:
        p.error(f"--ani_candidates must be comma-separated integers, got {args.ani_candidates!r}")
    if args.fixed_max_timestep is not None and args.fixed_max_timestep < 0:
        p.error(f"--fixed_max_timestep must be >= 0, got {args.fixed_max_timestep}")
    return args


def main(args: argparse.Namespace):
    from emojidiff_pipeline.train.run import AniConfig, train_ica_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ani = AniConfig(
        threshold=args.ani_threshold,
        candidates=args.ani_candidates,
        calibration_size=args.ani_calibration_size,
        seed=args.seed,
        fixed_max_timestep=args.fixed_max_timestep,
    )
    return train_ica_run(flags.training_run(args), ani)


if __name__ == "__main__":
    main(parse_args())
