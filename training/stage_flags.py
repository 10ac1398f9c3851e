"""The stage CLIs' shared flags, and their mapping onto the library's typed run (emojidiff_pipeline.train.run).

Each flag is named after the field it sets (``--recognizer`` -> ``FaceFrontEnd.recognizer``); the checks here
turn a bad value into an argparse error naming the flag before anything loads.
"""

from __future__ import annotations

import argparse

from emojidiff_pipeline.train.face_losses import FaceLossConfig
from emojidiff_pipeline.train.run import AdapterSpec, FaceFrontEnd, Stage1Config, TrainingRun, TripletSource


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """Base pipeline, data (a triplet manifest or a collection for same-identity triplets), run folder and length."""
    parser.add_argument("--pretrained_model", required=True, help="SDXL-style pipeline folder / Hub id")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--triplets", help="triplet manifest (JSONL, see emojidiff_pipeline.train.triplets)")
    data.add_argument("--same_identity_from", help="collection manifest to build same-identity triplets from")
    parser.add_argument("--num_references", type=int, default=2)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, required=True)
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("max_steps", "num_references"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")


def add_face_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("face front-end (train-side instruments)")
    g.add_argument(
        "--recognizer",
        default=None,
        help="identity embeddings: an ArcFace-style ONNX, or 'module:factory' returning a FaceRecognizer "
        "(e.g. emojidiff_pipeline.face_models.dlib_models:recognizer)",
    )
    g.add_argument("--face_pack", default=None, help="insightface model pack name (detection + recognition)")
    g.add_argument("--face_root", default="~/.insightface")
    g.add_argument(
        "--detector",
        default=None,
        help="'module:factory' returning a FaceDetector / keypoint callable (e.g. "
        "emojidiff_pipeline.face_models.mediapipe_mesh:detector)",
    )


def add_adapter_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("adapter")
    g.add_argument("--adapter", default=None, help="start from this adapter folder (default: new from the UNet)")
    g.add_argument("--identity_layers", default="all", help="layer spec for a new adapter (preset, name or re:)")
    g.add_argument("--expression_layers", default="expression_sensitive", help="layer spec for a new adapter")
    g.add_argument("--num_identity_tokens", type=int, default=4)
    g.add_argument("--num_expression_tokens", type=int, default=16)
    g.add_argument("--resampler_dim", type=int, default=None, help="default: the image encoder's width")
    g.add_argument("--resampler_depth", type=int, default=4)
    g.add_argument("--resampler_heads", type=int, default=None, help="default: resampler_dim // 64 (at least 1)")
    g.add_argument(
        "--expression_streams",
        default="image",
        choices=["image", "code", "both"],
        help="how the template reaches a new adapter's expression branch: image-encoder tokens (the "
        "paper's), an expression encoder's code, or both",
    )
    g.add_argument(
        "--expression_encoder",
        default=None,
        help="'module:factory' returning an ExpressionEncoder (emojidiff_pipeline.expression); needed by "
        "the code stream",
    )
    g.add_argument("--num_expression_code_tokens", type=int, default=4)
    g.add_argument(
        "--resampler_queries",
        default="learned",
        choices=["learned", "grid"],
        help="how a new image stream's resampler queries start: learned latents (a near mean-pool at init) or "
        "each the mean of its own region of the patch grid (position-preserving)",
    )
    g.add_argument(
        "--resampler_bottleneck", type=int, default=None, help="width a new image stream's tokens pass through"
    )
    g.add_argument(
        "--expression_code_head",
        action="store_true",
        help="a new image stream gets a head reading --expression_encoder's code back from its tokens (trained by "
        "--expression_code_loss_weight)",
    )


def add_stage1_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("stage-1 training")
    g.add_argument("--resolution", type=int, default=1024)
    g.add_argument("--batch_size", type=int, default=4, help="per process")
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--identity_drop", type=float, default=0.05)
    g.add_argument("--expression_drop", type=float, default=0.05)
    g.add_argument("--text_drop", type=float, default=0.05)
    g.add_argument(
        "--expression_code_loss_weight",
        type=float,
        default=0.0,
        help="auxiliary loss keeping the image stream predictive of the expression code (needs an adapter with "
        "--expression_code_head)",
    )
    g.add_argument(
        "--expression_code_pretrain_steps",
        type=int,
        default=0,
        help="first steps that train the auxiliary code loss alone, before the diffusion loss",
    )
    g.add_argument(
        "--face_loss_weight",
        type=float,
        default=0.0,
        help="extra diffusion-loss weight around the target's face keypoints (0: the standard loss)",
    )
    g.add_argument(
        "--expression_loss_weight",
        type=float,
        default=0.0,
        help="weight of the expression loss read by --expression_loss_model on the one-step x0 (0: off)",
    )
    g.add_argument(
        "--expression_loss_factor_weights",
        default=None,
        help="comma-separated weight per factor of --expression_loss_model's code in the expression loss "
        "(default: all 1), e.g. to weigh gaze and brows up",
    )
    g.add_argument(
        "--expression_loss_model",
        default=None,
        help="'module:factory' returning a DifferentiableFaceModel expression estimator "
        "(emojidiff_pipeline.train.face_losses); not the one evaluation measures with",
    )
    g.add_argument(
        "--identity_loss_weight",
        type=float,
        default=0.0,
        help="weight of the identity loss 1 - cos read by --identity_loss_model on the one-step x0",
    )
    g.add_argument(
        "--identity_loss_model",
        default=None,
        help="'module:factory' returning a DifferentiableFaceModel face recognizer",
    )
    g.add_argument(
        "--alignment_loss_weight",
        type=float,
        default=0.0,
        help="ICA's alignment loss 1 - cos(F(x0 expression on), stopgrad F(x0 expression off)) read by "
        "--identity_loss_model (0: off)",
    )
    g.add_argument(
        "--alignment_mask",
        action="store_true",
        help="compare the two images of the alignment loss with their eyes, brows and mouth greyed out, so it "
        "pulls the identity without pulling toward the expression-off face",
    )
    g.add_argument(
        "--identity_anchor",
        default="target",
        choices=["target", "reference"],
        help="the identity loss compares with F of the decoded target, or with the reference embedding "
        "(then F must be the network of --recognizer)",
    )
    g.add_argument(
        "--face_loss_max_timestep",
        type=int,
        default=400,
        help="the face losses apply to rows with timestep <= this (a one-step x0 from more noise is a blur)",
    )
    g.add_argument(
        "--face_loss_rows",
        type=int,
        default=None,
        help="the face losses read at most this many rows of each process's batch (the first with timestep <= "
        "--face_loss_max_timestep; batches are drawn at random): decoding and reading the face is most of a "
        "face-loss step (default: every qualifying row)",
    )
    g.add_argument(
        "--strip_prompt_words",
        default=None,
        help="comma-separated phrases removed from training prompts (e.g. expression words)",
    )
    g.add_argument("--num_validation", type=int, default=0, help="triplets held out for the validation loss")
    g.add_argument("--validation_steps", type=int, default=250)
    g.add_argument(
        "--early_stopping_patience",
        type=int,
        default=0,
        help="stop after this many validations without a better loss; the best adapter ships (0: off)",
    )
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=3)
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="a fresh run (no --resume_from_checkpoint) into a folder holding another run deletes that "
        "run's checkpoints, logs and adapter first; without it such a run is refused",
    )
    g.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    g.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="recompute the UNet's and the VAE decoder's blocks in the backward pass (less memory, slower)",
    )
    g.add_argument("--seed", type=int, default=0)


def check_stage1_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("identity_drop", "expression_drop", "text_drop"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if args.face_loss_weight < 0:
        parser.error(f"--face_loss_weight must be >= 0, got {args.face_loss_weight}")
    if not 0 <= args.expression_code_loss_weight < float("inf"):
        parser.error(
            f"--expression_code_loss_weight must be a finite number >= 0, got {args.expression_code_loss_weight}"
        )
    if args.expression_code_pretrain_steps < 0:
        parser.error(f"--expression_code_pretrain_steps must be >= 0, got {args.expression_code_pretrain_steps}")
    if args.expression_code_pretrain_steps and not args.expression_code_loss_weight > 0:
        parser.error(
            "--expression_code_pretrain_steps trains the code loss alone: it needs --expression_code_loss_weight > 0"
        )
    if not 0 <= args.alignment_loss_weight < float("inf"):
        parser.error(f"--alignment_loss_weight must be a finite number >= 0, got {args.alignment_loss_weight}")
    for kind in ("expression", "identity"):
        weight, model = getattr(args, f"{kind}_loss_weight"), getattr(args, f"{kind}_loss_model")
        if not weight >= 0 or weight == float("inf"):
            parser.error(f"--{kind}_loss_weight must be a finite number >= 0, got {weight}")
        if kind == "identity":
            weight = max(weight, args.alignment_loss_weight)  # the alignment loss reads the identity model too
        if weight > 0 and not model:
            parser.error(f"--{kind}_loss_weight {weight} needs --{kind}_loss_model (module:factory)")
        if model and weight == 0:
            parser.error(f"--{kind}_loss_model is given but --{kind}_loss_weight is 0: it would be ignored")
    if args.alignment_mask and not args.alignment_loss_weight > 0:
        parser.error("--alignment_mask masks the alignment loss: it needs --alignment_loss_weight > 0")
    weights = args.expression_loss_factor_weights
    if weights is not None:
        try:
            args.expression_loss_factor_weights = tuple(float(v) for v in weights.split(","))
        except ValueError:
            parser.error(f"--expression_loss_factor_weights takes comma-separated numbers, got {weights!r}")
    if args.face_loss_max_timestep < 0:
        parser.error(f"--face_loss_max_timestep must be >= 0, got {args.face_loss_max_timestep}")
    if args.face_loss_rows is not None and args.face_loss_rows < 1:
        parser.error(f"--face_loss_rows must be >= 1, got {args.face_loss_rows}")
    face_weights = (args.expression_loss_weight, args.identity_loss_weight, args.alignment_loss_weight)
    if args.face_loss_rows is not None and not any(w > 0 for w in face_weights):
        parser.error(
            "--face_loss_rows limits the face losses: it needs an expression, identity or alignment weight > 0"
        )
    for name in ("num_validation", "early_stopping_patience"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.early_stopping_patience and not args.num_validation:
        parser.error("--early_stopping_patience needs --num_validation > 0 (a held-out loss to watch)")
    for name in ("batch_size", "checkpointing_steps", "resolution", "validation_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.recognizer is None and args.face_pack is None:
        parser.error("identity embeddings need --recognizer (ONNX) or --face_pack (an insightface model pack)")


def face_front_end(args: argparse.Namespace) -> FaceFrontEnd:
    return FaceFrontEnd(args.recognizer, args.face_pack, args.face_root, args.detector)


def adapter_spec(args: argparse.Namespace, path: str | None = None) -> AdapterSpec:
    """The adapter flags (``path`` overrides ``--adapter``)."""
    return AdapterSpec(
        path=path or args.adapter,
        identity_layers=args.identity_layers,
        expression_layers=args.expression_layers,
        num_identity_tokens=args.num_identity_tokens,
        num_expression_tokens=args.num_expression_tokens,
        resampler_dim=args.resampler_dim,
        resampler_depth=args.resampler_depth,
        resampler_heads=args.resampler_heads,
        expression_streams=args.expression_streams,
        expression_encoder=args.expression_encoder,
        num_expression_code_tokens=args.num_expression_code_tokens,
        resampler_queries=args.resampler_queries,
        resampler_bottleneck=args.resampler_bottleneck,
        expression_code_head=args.expression_code_head,
        seed=args.seed,
    )


def stage1_config(args: argparse.Namespace, max_steps: int) -> Stage1Config:
    face = FaceLossConfig(
        expression_weight=args.expression_loss_weight,
        identity_weight=args.identity_loss_weight,
        max_timestep=args.face_loss_max_timestep,
        alignment_weight=args.alignment_loss_weight,
        identity_anchor=args.identity_anchor,
        expression_factor_weights=args.expression_loss_factor_weights,
        alignment_mask=args.alignment_mask,
        max_rows=args.face_loss_rows,
    )
    return Stage1Config(
        max_steps=max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_warmup_steps=args.lr_warmup_steps,
        identity_drop=args.identity_drop,
        expression_drop=args.expression_drop,
        text_drop=args.text_drop,
        seed=args.seed,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        face_loss_weight=args.face_loss_weight,
        num_validation=args.num_validation,
        validation_steps=args.validation_steps,
        early_stopping_patience=args.early_stopping_patience,
        overwrite_output_dir=args.overwrite_output_dir,
        face_losses=face if face.enabled else None,
        gradient_checkpointing=args.gradient_checkpointing,
        expression_code_loss_weight=args.expression_code_loss_weight,
        expression_code_pretrain_steps=args.expression_code_pretrain_steps,
    )


def prompt_words(args: argparse.Namespace) -> tuple[str, ...]:
    """``--strip_prompt_words`` ("a,b") as a tuple."""
    return tuple(args.strip_prompt_words.split(",")) if args.strip_prompt_words else ()


def training_run(args: argparse.Namespace) -> TrainingRun:
    """The run the stage flags describe (run, adapter, face and stage-1 flag groups)."""
    data = TripletSource(
        triplets=args.triplets,
        same_identity_from=args.same_identity_from,
        num_references=args.num_references,
        seed=args.seed,
        strip_prompt_words=prompt_words(args),
    )
    return TrainingRun(
        pretrained_model=args.pretrained_model,
        output_dir=args.output_dir,
        data=data,
        face=face_front_end(args),
        config=stage1_config(args, args.max_steps),
        adapter=adapter_spec(args),
        resolution=args.resolution,
        resume_from_checkpoint=args.resume_from_checkpoint,
        expression_loss_model=args.expression_loss_model,
        identity_loss_model=args.identity_loss_model,
        mixed_precision=args.mixed_precision,
    )
