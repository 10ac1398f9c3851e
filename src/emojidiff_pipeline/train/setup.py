"""Set-up shared by the stage scripts: the face analyzer they name, and a new or loaded adapter."""

from __future__ import annotations

import argparse

import torch

from ..adapter import EmojiDiffAdapter


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


def build_face_analyzer(args: argparse.Namespace, need_detector: bool = False):
    """FaceAnalyzer from --face_pack, or from --detector / known keypoints + --recognizer (a path or a
    ``module:factory`` hook, :func:`emojidiff_pipeline.hooks.load_factory`)."""
    from ..face import FaceAnalyzer
    from ..hooks import is_factory_spec, load_factory

    if args.recognizer is None and args.face_pack is None:
        raise ValueError(
            "Identity embeddings need `--recognizer` (ONNX or module:factory) or `--face_pack` (an insightface pack)."
        )
    recognizer = args.recognizer
    if is_factory_spec(recognizer):
        recognizer = load_factory(recognizer, "--recognizer")
    if args.face_pack:
        analyzer = FaceAnalyzer(args.face_pack, root=args.face_root)
        if recognizer is not None:
            analyzer.recognizer = FaceAnalyzer.from_models(lambda image: [], recognizer).recognizer
        return analyzer
    if args.detector:
        return FaceAnalyzer.from_models(load_factory(args.detector, "--detector"), recognizer=recognizer)
    if need_detector:
        raise ValueError("Generated images need a face detector: pass `--face_pack` or `--detector`.")
    return FaceAnalyzer.from_models(lambda image: [], recognizer=recognizer)  # keypoints come from manifests


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


def build_expression_encoder(args: argparse.Namespace):
    """The --expression_encoder, or None when not given."""
    from ..expression import load_expression_encoder

    return load_expression_encoder(args.expression_encoder) if args.expression_encoder else None


def build_adapter(args: argparse.Namespace, pipe, adapter_path: str | None = None, face=None) -> EmojiDiffAdapter:
    """Load `adapter_path` (or --adapter), else a new adapter from the UNet seeded with --seed. With the run's face
    analyzer `face`, a new adapter records its recognizer's name and width, and a loaded one must match them."""
    from ..face_models.protocols import check_adapter_recognizer

    recognizer, embed_dim = getattr(face, "recognizer_name", None), getattr(face, "embedding_dim", None)
    path = adapter_path or args.adapter
    if path:
        adapter = EmojiDiffAdapter.from_pretrained(path)
        if face is not None:
            check_adapter_recognizer(adapter.config, recognizer, embed_dim, "--recognizer / --face_pack")
        return adapter
    streams = getattr(args, "expression_streams", "image")
    encoder = build_expression_encoder(args) if streams != "image" else None
    if streams != "image" and encoder is None:
        raise ValueError(f"`--expression_streams {streams}` needs `--expression_encoder` (module:factory).")
    if streams != "code" and pipe.image_encoder is None:
        raise ValueError("The pipeline has no `image_encoder`; the expression branch's image stream needs one.")
    torch.manual_seed(args.seed)
    width = pipe.image_encoder.config.hidden_size if pipe.image_encoder is not None else 1280
    dim = args.resampler_dim or width
    return EmojiDiffAdapter.from_unet(
        pipe.unet,
        identity_layers=args.identity_layers,
        expression_layers=args.expression_layers,
        num_identity_tokens=args.num_identity_tokens,
        num_expression_tokens=args.num_expression_tokens,
        image_embed_dim=width,
        resampler_dim=dim,
        resampler_depth=args.resampler_depth,
        resampler_heads=args.resampler_heads or max(1, dim // 64),
        expression_streams=streams,
        expression_code_dim=None if encoder is None else encoder.code_dim,
        expression_encoder=None if encoder is None else encoder.name,
        num_expression_code_tokens=getattr(args, "num_expression_code_tokens", 4),
        **({} if embed_dim is None else {"identity_embed_dim": embed_dim}),
        identity_encoder=recognizer,
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
    g.add_argument("--seed", type=int, default=0)


def check_stage1_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("identity_drop", "expression_drop", "text_drop"):
        if not 0.0 <= getattr(args, name) < 1.0:
            parser.error(f"--{name} must be in [0, 1), got {getattr(args, name)}")
    if args.face_loss_weight < 0:
        parser.error(f"--face_loss_weight must be >= 0, got {args.face_loss_weight}")
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
    if args.face_loss_max_timestep < 0:
        parser.error(f"--face_loss_max_timestep must be >= 0, got {args.face_loss_max_timestep}")
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


def build_face_loss_models(args: argparse.Namespace) -> tuple:
    """(expression model or None, identity model or None) from --expression_loss_model / --identity_loss_model."""
    from .face_losses import DifferentiableFaceModel
    from .idi import load_callable

    models = []
    for kind in ("expression", "identity"):
        spec = getattr(args, f"{kind}_loss_model", None)
        model = load_callable(spec, f"--{kind}_loss_model") if spec else None
        if model is not None and not isinstance(model, DifferentiableFaceModel):
            raise ValueError(
                f"`--{kind}_loss_model` {spec!r} must return a DifferentiableFaceModel, got {type(model).__name__}."
            )
        models.append(model)
    return tuple(models)


def stage1_config(args: argparse.Namespace, max_steps: int):
    from .face_losses import FaceLossConfig
    from .stage1 import Stage1Config

    face = FaceLossConfig(
        expression_weight=getattr(args, "expression_loss_weight", 0.0),
        identity_weight=getattr(args, "identity_loss_weight", 0.0),
        max_timestep=getattr(args, "face_loss_max_timestep", 400),
        alignment_weight=getattr(args, "alignment_loss_weight", 0.0),
        identity_anchor=getattr(args, "identity_anchor", "target"),
        expression_factor_weights=_factor_weights(getattr(args, "expression_loss_factor_weights", None)),
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
        overwrite_output_dir=getattr(args, "overwrite_output_dir", False),
        face_losses=face if face.enabled else None,
    )


def stage1_triplets(args: argparse.Namespace, accelerator, output_dir) -> list:
    """The run's triplets: --triplets, or same-identity triplets built from --same_identity_from (written to
    <output_dir>/triplets.jsonl by the main process and read back by all), with --strip_prompt_words applied."""
    from pathlib import Path

    from .triplets import read_collection, read_triplets, same_identity_triplets, strip_prompt_phrases, write_triplets

    output_dir = Path(output_dir)
    if args.same_identity_from:  # read and check the inputs before anything is written
        records = read_collection(args.same_identity_from, "`--same_identity_from` collection")
        triplets = same_identity_triplets(
            records, Path(args.same_identity_from).parent, args.num_references, args.seed
        )
        if not triplets:
            raise ValueError(
                f"`--same_identity_from` collection {args.same_identity_from!r} gives no same-identity "
                "triplet: no identity has two or more distinct photos."
            )
        output_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            write_triplets(triplets, output_dir / "triplets.jsonl")
        accelerator.wait_for_everyone()
        triplets = read_triplets(output_dir / "triplets.jsonl")
    else:
        triplets = read_triplets(args.triplets)
        output_dir.mkdir(parents=True, exist_ok=True)
    if args.strip_prompt_words:
        triplets = strip_prompt_phrases(triplets, args.strip_prompt_words.split(","))
    return triplets


def make_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator

    # on a machine without CUDA, processes started by `accelerate launch --multi_gpu` / torchrun use gloo on CPU
    return Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())


def _factor_weights(text: str | None) -> tuple[float, ...] | None:
    """``--expression_loss_factor_weights`` ("1,1,3") as floats; a malformed list is refused by the flag's name."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"`--expression_loss_factor_weights` takes comma-separated numbers, got {text!r}.") from None
