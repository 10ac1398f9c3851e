"""Evaluate EmojiDiff rows with eval-side instruments; writes results.json, results.md and image grids.

Synthetic world (out of the box): held-out identities as references, held-out identities' renders as templates,
prompts asking for a style other than the template's, all styles.

    python training/evaluate.py --out docs/results --row base=base --row identity_only=<adapter>@id_only \
        --row stage1_same_identity=<adapter> [--num_identities 16 --num_templates 8]

User data (selected by ``--references``), e.g. on SDXL trained with insightface; the eval-side instruments default
to models that ship in PyPI packages (MediaPipe's face mesh to detect, dlib's recognizer, dlib's 68 landmarks for
the LMS expression error), so nothing else is needed:

    python training/evaluate.py --out runs/eval --row base=base --row emojidiff=<adapter> \
        --pretrained_model <sdxl_base> --references refs/ --templates templates/ --face_pack antelopev2 \
        [--eval_face_pack buffalo_l --eval_recognizer other.onnx --eval_expression_estimator my.module:scorer \
         --prompt "a watercolor portrait" --resolution 1024 --batch_size 4]

A small real-photo set from packaged photos: ``python training/real_photo_set.py --out runs/real_photos`` (see
docs/real_photos/).

- ``--references``: one subfolder per person with >= 1 image (png/jpg/jpeg/webp); the first image (sorted) is the
  reference, the first two (when there are two) give the same-person similarity (the identity ceiling).
- ``--templates``: expression templates; a template's person is its subfolder's name, or for an image directly
  in the folder its file stem. Cases: every reference person x every template of another person, prompts
  (``--prompt``, repeatable, default "a portrait photo") taken in turn.
- the pipeline's own face front-end (crops and embeds the inputs; needed by adapter rows): ``--face_pack`` (+
  ``--face_root``, optional ``--recognizer``), or ``--detector module:factory`` with ``--recognizer`` (an ONNX or
  a ``module:factory`` FaceRecognizer, e.g. ``emojidiff_pipeline.face_models.dlib_models:recognizer``).
- eval-side instruments, which must play no part in training: ``--eval_face_pack`` (+ ``--eval_face_root``) or
  ``--eval_detector module:factory`` (default: MediaPipe's face mesh), ``--eval_recognizer`` (ONNX or
  ``module:factory``; default: dlib's, or the pack's) and ``--eval_expression_estimator module:factory`` (default:
  dlib's 68-landmark LMS features), where ``factory()`` returns ``scorer(images: list[uint8 HxWx3], kps: list[(5, 2)
  | None]) -> (N, K)`` (NaN rows where it finds no face). There are no style labels, so style leakage and style
  following are not measured (NaN, "n/a").
- emotion columns: fer's 7-class emotion CNN (:mod:`emojidiff_pipeline.face_models.fer_emotion`; h5py and the
  ``fer`` package's data file) on each output and its template, both cropped at the eval-side detector's keypoints:
  ``emotion_agreement`` = 1 - total variation distance of the two distributions (in [0, 1]; the template itself
  scores 1) and ``emotion_top1_agreement`` (same most likely emotion). Without fer's data they read "n/a".
- two reference lines open the table: each case's reference person's other photo (what a perfect identity with the
  reference's own expression scores) and the template itself (expression error 0; identity and leakage of a copy).
- ``--pretrained_model``: the base pipeline the adapter was trained on, with its ``image_encoder`` and
  ``feature_extractor`` (as for the training scripts); generation at ``--resolution`` (default 1024) on
  ``--device`` (default cuda when available, fp16 there).

Row specs: ``base`` (no adapter), ``<adapter folder>`` (both branches), ``<adapter folder>@id_only``
(expression scale 0), ``<adapter folder>@exp=<scale>`` / ``@id=<scale>`` (another expression / identity scale),
``@eg=<scale>`` (the expression branch's own guidance scale); options combine, e.g. ``<adapter>@id=1.5@exp=1.2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import stage_flags
import torch

from emojidiff_pipeline.evaluation import (
    GenerationSettings,
    RowSpec,
    generate_row,
    parse_row_spec,
    user_cases,
)
from emojidiff_pipeline.train.run import FaceFrontEnd

logger = logging.getLogger("evaluate")

USER_TITLE = "EmojiDiff on user references and templates"
STYLE_COLUMNS = ("style_leakage", "style_following")
# eval-side defaults for user data: models that ship in PyPI packages (emojidiff_pipeline.face_models)
EVAL_DETECTOR = "emojidiff_pipeline.face_models.mediapipe_mesh:detector"
EVAL_RECOGNIZER = "emojidiff_pipeline.face_models.dlib_models:recognizer"
EVAL_EXPRESSION = "emojidiff_pipeline.face_models.dlib_models:expression_scorer"
EVAL_EMOTION = "emojidiff_pipeline.face_models.fer_emotion:emotion_scorer"  # fer's 7-class emotion CNN, in torch
EMOTION_COLUMNS = ("emotion_agreement", "emotion_top1_agreement")


def parse_args(input_args=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--row", action="append", required=True, help="NAME=base | NAME=<adapter>[@id_only | @exp=S][@id=S][@eg=S]"
    )
    p.add_argument("--out", default="docs/results")
    p.add_argument("--title", default="EmojiDiff in the synthetic world: held-out identities and templates")
    p.add_argument("--pretrained_model", default=None, help="base pipeline (default: the shipped synthetic base)")
    p.add_argument("--num_identities", type=int, default=16)
    p.add_argument(
        "--num_templates",
        type=int,
        default=64,
        help="held-out templates (synthetic world: the first 44 show one factor each, covering all 11)",
    )
    p.add_argument("--no_probe", action="store_true", help="skip the controlled template probe (adapter rows)")
    p.add_argument(
        "--expression_encoder",
        default=None,
        help="'module:factory' ExpressionEncoder for adapters with a code stream (synthetic world: the "
        "world's train-side estimator by default)",
    )
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance_scale", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=int, default=6, help="identities and templates shown in each row's grid")
    u = p.add_argument_group("user data (instead of the synthetic world)")
    u.add_argument("--references", default=None, help="folder with one subfolder of images per person")
    u.add_argument("--templates", default=None, help="folder of expression templates (subfolder or stem = person)")
    u.add_argument("--prompt", action="append", default=None, help="repeatable (default: 'a portrait photo')")
    u.add_argument("--resolution", type=int, default=None, help="generated height and width (default 1024)")
    u.add_argument("--device", default=None, help="default: cuda when available (fp16), else cpu")
    u.add_argument("--eval_face_pack", default=None, help="eval-side insightface pack (detection + recognition)")
    u.add_argument("--eval_face_root", default="~/.insightface")
    u.add_argument(
        "--eval_detector",
        default=None,
        help=f"eval-side 'module:factory' FaceDetector when no --eval_face_pack (default {EVAL_DETECTOR})",
    )
    u.add_argument(
        "--eval_recognizer",
        default=None,
        help=f"eval-side ArcFace-style ONNX or 'module:factory' FaceRecognizer (default without a pack: "
        f"{EVAL_RECOGNIZER})",
    )
    u.add_argument(
        "--eval_expression_estimator",
        default=None,
        help=f"'module:factory' -> scorer(images, kps) (default {EVAL_EXPRESSION})",
    )
    stage_flags.add_face_args(p)  # the pipeline's own face front-end (user data only)
    args = p.parse_args(input_args)
    args.argv = list(sys.argv[1:] if input_args is None else input_args)  # for the report's "written by" line
    for spec in args.row:
        if "=" not in spec:
            p.error(f"--row must be NAME=SPEC, got {spec!r}")
        try:
            parse_row_spec(spec.split("=", 1)[1])
        except ValueError as err:
            p.error(str(err))
    for name in ("num_identities", "num_templates", "steps", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_identities < 3:
        p.error("--num_identities must be >= 3 (leakage needs strangers)")
    user_only = (
        "templates prompt resolution device eval_face_pack eval_detector eval_recognizer eval_expression_estimator"
        " face_pack recognizer detector"
    ).split()
    if args.references is None:
        given = [f"--{name}" for name in user_only if getattr(args, name) is not None]
        if given:
            p.error(f"{', '.join(given)} only apply to user data: pass --references (and --templates)")
        return args
    missing = []
    if args.templates is None:
        missing.append("--templates (a folder of expression templates)")
    if args.pretrained_model is None:
        missing.append("--pretrained_model (the base pipeline, e.g. an SDXL folder or Hub id)")
    adapter_rows = any(spec.split("=", 1)[1] != "base" for spec in args.row)
    if adapter_rows and args.face_pack is None and not (args.detector and args.recognizer):
        missing.append(
            "--face_pack (the pipeline's face front-end for the adapter rows; or --detector with --recognizer)"
        )
    if args.eval_face_pack is not None and args.eval_detector is not None:
        p.error("--eval_face_pack and --eval_detector both give the eval-side detector: pass one")
    if missing:
        p.error("--references (user data) also needs " + "; ".join(missing))
    if args.title == p.get_default("title"):
        args.title = USER_TITLE
    args.prompt = args.prompt or ["a portrait photo"]
    args.resolution = 1024 if args.resolution is None else args.resolution
    if args.resolution < 1:
        p.error(f"--resolution must be >= 1, got {args.resolution}")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.eval_face_pack is None:
        args.eval_detector = args.eval_detector or EVAL_DETECTOR
        args.eval_recognizer = args.eval_recognizer or EVAL_RECOGNIZER
    args.eval_expression_estimator = args.eval_expression_estimator or EVAL_EXPRESSION
    return args


def generation_settings(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(args.batch_size, args.seed, args.steps, args.guidance_scale)


def _face_analyzer(arg: str, **kwargs):
    """FaceFrontEnd(**kwargs).build with errors that name the option they came from."""
    try:
        return FaceFrontEnd(**kwargs).build(need_detector=True)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise type(err)(f"{arg}: {err}") from err


def thumbnails(images: list[np.ndarray], size: int = 256) -> list[np.ndarray]:
    from PIL import Image

    if images[0].shape[0] <= size:
        return images
    return [np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images]


def main_user(args: argparse.Namespace) -> dict:
    """Every row on the --references x --templates cases, scored with the eval-side instruments given (by default
    models that ship in PyPI packages), after two reference lines; writes results.json/.md, grids and results.png."""
    from tqdm.auto import tqdm

    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.evaluation import (
        Instruments,
        base_record,
        plot_rows,
        same_person_similarity,
        score_row,
        write_report,
    )
    from emojidiff_pipeline.hooks import load_factory
    from emojidiff_synthetic.cases import save_grid

    cases, pairs, described = user_cases(args.references, args.templates, args.prompt)
    adapter_specs = [spec for spec in args.row if spec.split("=", 1)[1] != "base"]
    face = None
    if adapter_specs:
        face = _face_analyzer(
            "--face_pack" if args.face_pack else "--detector",
            recognizer=args.recognizer,
            face_pack=args.face_pack,
            face_root=args.face_root,
            detector=args.detector,
        )
    eval_face = _face_analyzer(
        "--eval_face_pack" if args.eval_face_pack else "--eval_detector",
        recognizer=args.eval_recognizer,
        face_pack=args.eval_face_pack,
        face_root=args.eval_face_root,
        detector=args.eval_detector,
    )
    if face is not None and face.recognizer_name == eval_face.recognizer_name:
        logger.warning(
            "The eval-side recognizer is the pipeline's own (%s): identity similarity is then measured "
            "by the recognizer the identity branch was conditioned on.",
            eval_face.recognizer_name,
        )
    emotion, emotion_note = emotion_instrument()
    expression = load_factory(args.eval_expression_estimator, "--eval_expression_estimator")
    inst = Instruments(face=eval_face, expression=expression, emotion=emotion)
    logger.info(
        "eval-side instruments: %r, expression %s, emotion %s",
        eval_face,
        args.eval_expression_estimator,
        EVAL_EMOTION if emotion is not None else "n/a",
    )
    dtype = torch.float16 if torch.device(args.device).type == "cuda" else torch.float32
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model, torch_dtype=dtype).to(args.device)
    pipe.set_progress_bar_config(disable=True)  # one bar over the whole run instead of one per batch
    if (pipe.image_encoder is None or pipe.feature_extractor is None) and adapter_specs:
        raise ValueError(
            f"--pretrained_model {args.pretrained_model} has no `image_encoder` / `feature_extractor`, "
            "which adapter rows need for the templates: use the base folder the adapter was trained "
            "on (as for the training scripts)."
        )
    out = Path(args.out)
    # reference lines: the reference person's other photo, and the template itself
    second = {name: b for a, b, _, _ in pairs for name in [_person_of(a, cases)] if name is not None}
    references = {}
    with tqdm(total=2 + len(args.row), desc="scoring rows", unit="row") as scoring:
        if second:
            have = [c for c in cases if c.reference_person in second]
            references["ref_other_photo_of_reference"] = score_row(
                [second[c.reference_person] for c in have], have, inst
            )
        scoring.update(1)
        references["ref_template_itself"] = score_row([c.template for c in cases], cases, inst)
        scoring.update(1)
        rows = {}
        with tqdm(total=len(args.row) * len(cases), desc="generating", unit="image") as generating:
            for spec in args.row:
                name, row_spec = spec.split("=", 1)
                logger.info("row %s (%s): generating %d images", name, row_spec, len(cases))
                images = generate_row(
                    pipe,
                    row_spec,
                    cases,
                    face,
                    generation_settings(args),
                    resolution=args.resolution,
                    expression_encoder=load_encoder_factory(args.expression_encoder),
                    progress=generating,
                )
                rows[name] = score_row(images, cases, inst)
                scoring.update(1)
                save_grid(thumbnails(images), cases, out / f"grid_{name}.png", args.grid)
                logger.info("row %s: %s", name, rows[name])
    if emotion is None:  # the columns say why instead of missing
        for r in (*references.values(), *rows.values()):
            r.update({k: float("nan") for k in EMOTION_COLUMNS})
    ceiling = "n/a (no person under --references has two images)"
    if pairs:
        ceiling = round(same_person_similarity(pairs, eval_face), 4)
    extra = {
        "base_model": base_record(args.pretrained_model),
        "same_person_identity_similarity": ceiling,
        "cases": described,
        "eval_instruments": f"faces {eval_face!r}; expression {args.eval_expression_estimator}",
        "reference_lines": references,
        "style_metrics": "n/a (user data has no style labels)",
        "emotion_metrics": emotion_note,
    }
    command = "python training/evaluate.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(
        rows, extra, out, command, args.title, not_measured=(*STYLE_COLUMNS, "frechet_to_real", *EMOTION_COLUMNS)
    )
    plot_rows({**{f"*{k}*": v for k, v in references.items()}, **rows}, out / "results.png", title=args.title)
    return {"rows": rows, **extra}


def emotion_instrument():
    """(fer's emotion scorer, a note for the report), or (None, "n/a (why)") with one warning when h5py or fer's
    data file is missing: the emotion columns are then not measured, and the rest of the evaluation runs."""
    from emojidiff_pipeline.hooks import load_factory

    try:
        scorer = load_factory(EVAL_EMOTION, "emotion scorer")
    except (ImportError, FileNotFoundError) as err:
        logger.warning("The emotion columns (%s) are not measured: %s", ", ".join(EMOTION_COLUMNS), err)
        return None, f"n/a ({err})"
    return scorer, (
        f"{EVAL_EMOTION} (fer 25.10.3's mini-Xception in torch): emotion_agreement = 1 - total variation distance "
        "between the 7-class emotion distributions of output and template; emotion_top1_agreement = share of cases "
        "with the template's most likely emotion"
    )


def _person_of(image: np.ndarray, cases) -> str | None:
    """The reference person whose (first) reference photo is `image`."""
    return next((c.reference_person for c in cases if c.reference is image), None)


# ------------------------------------------------------------------------------------------------ main
def synthetic_benchmark(args: argparse.Namespace):
    """The synthetic world's expression benchmark: (world, pipe, cases, same-person pairs, reference-line images,
    eval-side Instruments, expression-encoder factory) for --num_identities x --num_templates at --seed."""
    from emojidiff_pipeline import EmojiDiffPipeline
    from emojidiff_pipeline.evaluation import Instruments
    from emojidiff_synthetic.cases import expression_benchmark
    from emojidiff_synthetic.instruments import classify_styles
    from emojidiff_synthetic.load import BASE_DIR, expression_encoder, expression_scorer, load_world
    from emojidiff_synthetic.renderer import EXPRESSION_FIELDS

    world = load_world()
    pipe = EmojiDiffPipeline.from_pretrained(args.pretrained_model or BASE_DIR)
    cases, pairs, lines = expression_benchmark(args.num_identities, args.num_templates, args.seed)
    style = world.instrument("style")
    inst = Instruments(
        face=world.eval_face,
        expression=expression_scorer("eval"),
        style=lambda images: classify_styles(style, np.stack(images))["labels"],
        expression_fields=EXPRESSION_FIELDS,
    )
    inst.real_identity_features = identity_features(lines["perfect"], world.eval_face)
    encoder = load_encoder_factory(args.expression_encoder) or (lambda: expression_encoder("train"))
    return world, pipe, cases, pairs, lines, inst, encoder


def main(args: argparse.Namespace) -> dict:
    from emojidiff_pipeline.evaluation import (
        base_record,
        same_person_similarity,
        score_row,
        template_use_probe,
        vae_round_trip,
        write_report,
    )
    from emojidiff_synthetic.cases import save_grid
    from emojidiff_synthetic.load import BASE_DIR

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if getattr(args, "references", None) is not None:
        return main_user(args)
    world, pipe, cases, pairs, lines, inst, encoder = synthetic_benchmark(args)
    out = Path(args.out)
    base = base_record(args.pretrained_model or BASE_DIR)  # rows are scored again when the base's files change
    # reference lines: what ignoring the template scores, what a perfect output scores, and what the perfect output
    # scores after the base model's VAE (the ceiling of any adapter on this base: detail the latent cannot hold)
    references = {
        "ref_neutral_face": score_row(lines["neutral"], cases, inst),
        "ref_perfect_output": score_row(lines["perfect"], cases, inst),
        "ref_perfect_through_vae": score_row(
            vae_round_trip(pipe.vae, lines["perfect"], batch_size=args.batch_size), cases, inst
        ),
    }
    rows, probes = {}, {}
    for spec in args.row:
        name, row_spec = spec.split("=", 1)
        key = row_key(row_spec, args, base["digest"])
        cached = read_row_cache(out, name, key)
        if cached is not None:  # this row, with these weights and settings, was already scored (deterministic)
            logger.info("row %s (%s): reusing its earlier result", name, row_spec)
            rows[name] = cached["scores"]
            if cached.get("probe") is not None:
                probes[name] = cached["probe"]
            continue
        logger.info("row %s (%s): generating %d images", name, row_spec, len(cases))
        images = generate_row(
            pipe, row_spec, cases, world.train_face, generation_settings(args), expression_encoder=encoder
        )
        rows[name] = score_row(images, cases, inst)
        save_grid(images, cases, out / f"grid_{name}.png", args.grid)
        row = RowSpec.parse(row_spec)  # the probe measures the adapter as trained, so only at its default scales
        if not row.is_base and row.default_scales and not args.no_probe:
            probes[name] = template_use_probe(pipe, cases, lines["perfect"], lines["probe_template"], seed=args.seed)
        write_row_cache(out, name, key, rows[name], probes.get(name))
        logger.info("row %s: %s %s", name, rows[name], probes.get(name, ""))
    extra = {
        "base_model": base,
        "same_person_identity_similarity": round(same_person_similarity(pairs, world.eval_face), 4),
        "cases": f"{args.num_identities} held-out identities x {args.num_templates} held-out templates "
        "(44 single-factor templates covering all 11 factors, the rest random)",
        "reference_lines": references,
        "template_probe": probes,
        "image_quality": "face_sharpness: variance of the Laplacian of the grey 112 px aligned face crop (higher is "
        "sharper; compare with the perfect outputs, real renders of the same cases); frechet_to_real: "
        "Frechet distance of the eval identity features to the perfect outputs' (0 for that line by "
        "construction; the neutral line shows what a real render with another expression scores)",
    }
    command = "python training/evaluate.py " + " ".join(shlex.quote(a) for a in args.argv)
    write_report(rows, extra, out, command, args.title)
    return {"rows": rows, **extra}


def identity_features(images, face) -> np.ndarray:
    """(M, D) eval-side identity embeddings of the images whose face is detected."""
    out = []
    for image in images:
        faces = face.detect(image, "image")
        if faces:
            out.append(face.identity_embedding(image, "image", kps=face.select(faces, "image").kps))
    return np.stack(out)


def scoring_fingerprint() -> str:
    """A digest of the code that scores a row (emojidiff_pipeline.evaluation's scores and probes): a row cached by
    other scoring code is scored again rather than reused without the metrics added since."""
    import hashlib

    from emojidiff_pipeline.evaluation import probes, scores

    return hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (scores, probes))).hexdigest()[:16]


def row_key(row_spec: str, args: argparse.Namespace, base_digest: str | None = None) -> str:
    """What a row's scores depend on: its spec, the adapter's weight file (size and mtime), the base pipeline's
    files (`base_digest`, :func:`~emojidiff_pipeline.evaluation.folder_digest`), the case settings and the scoring
    code."""
    import hashlib

    folder, _ = parse_row_spec(row_spec)
    weights = Path(folder) / "diffusion_pytorch_model.safetensors"
    stamp = f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.exists() else ""
    settings = [
        row_spec,
        stamp,
        args.pretrained_model,
        base_digest,
        args.num_identities,
        args.num_templates,
        args.steps,
        args.guidance_scale,
        args.batch_size,
        args.seed,
        args.no_probe,
        args.expression_encoder,
        scoring_fingerprint(),
    ]
    return hashlib.sha256(json.dumps(settings, default=str).encode()).hexdigest()[:16]


def read_row_cache(out: Path, name: str, key: str) -> dict | None:
    path = out / "rows" / f"{name}.json"
    if not path.exists():
        return None
    cached = json.loads(path.read_text())
    return cached if cached.get("key") == key and (out / f"grid_{name}.png").exists() else None


def write_row_cache(out: Path, name: str, key: str, scores: dict, probe: dict | None) -> None:
    """One finished row, written to a temporary name and renamed into place (a rerun resumes after it)."""
    path = out / "rows" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "scores": scores, "probe": probe}, indent=1))
    tmp.replace(path)


def load_encoder_factory(spec: str | None):
    """--expression_encoder 'module:factory' -> a zero-argument loader of the encoder, or None."""
    if spec is None:
        return None
    from emojidiff_pipeline.expression import load_expression_encoder

    return lambda: load_expression_encoder(spec, "--expression_encoder")


if __name__ == "__main__":
    main(parse_args())
