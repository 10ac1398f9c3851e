"""A training run as data: what a stage needs to build its face front-end, adapter and triplets, and one call each for
stage 1 and ICA. The stage CLIs (training/) map their flags onto these dataclasses; a driver builds them directly.

    run = TrainingRun(
        pretrained_model="path/to/sdxl", output_dir="runs/stage1", max_steps=20000,
        data=TripletSource(triplets="triplets.jsonl"), face=FaceFrontEnd(recognizer="arcface.onnx"),
        config=Stage1Config(max_steps=20000, batch_size=4),
    )
    train_stage1_run(run)
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapter import EmojiDiffAdapter
from .ica import AniConfig
from .idi import FilterConfig
from .stage1 import Stage1Config

logger = logging.getLogger(__name__)


@dataclass
class FaceFrontEnd:
    """The face analyzer a run uses: an insightface pack (``face_pack``), or a keypoint ``detector`` (``module:
    factory``) / keypoints known from the manifests, with a ``recognizer`` (an ArcFace-style ONNX path or a
    ``module:factory`` hook returning a FaceRecognizer)."""

    recognizer: str | None = None
    face_pack: str | None = None
    face_root: str = "~/.insightface"
    detector: str | None = None

    def build(self, need_detector: bool = False):
        """The :class:`~emojidiff_pipeline.face.FaceAnalyzer`; generated images (`need_detector`) need a detector."""
        from ..face import FaceAnalyzer
        from ..hooks import is_factory_spec, load_factory

        if self.recognizer is None and self.face_pack is None:
            raise ValueError(
                "Identity embeddings need `recognizer` (ONNX or module:factory) or `face_pack` (an insightface pack)."
            )
        recognizer = self.recognizer
        if is_factory_spec(recognizer):
            recognizer = load_factory(recognizer, "recognizer")
        if self.face_pack:
            analyzer = FaceAnalyzer(self.face_pack, root=self.face_root)
            if recognizer is not None:
                analyzer.recognizer = FaceAnalyzer.from_models(lambda image: [], recognizer).recognizer
            return analyzer
        if self.detector:
            return FaceAnalyzer.from_models(load_factory(self.detector, "detector"), recognizer=recognizer)
        if need_detector:
            raise ValueError("Generated images need a face detector: pass `face_pack` or `detector`.")
        return FaceAnalyzer.from_models(lambda image: [], recognizer=recognizer)  # keypoints come from manifests


@dataclass
class AdapterSpec:
    """The adapter a run trains: the folder at ``path``, or a new one from the UNet with these settings (seeded by
    ``seed``). ``expression_encoder`` (``module:factory``) feeds the code stream, and with ``expression_code_head``
    gives the codes the image stream's auxiliary head learns to read back."""

    path: str | None = None
    identity_layers: str = "all"
    expression_layers: str = "expression_sensitive"
    num_identity_tokens: int = 4
    num_expression_tokens: int = 16
    resampler_dim: int | None = None  # default: the image encoder's width
    resampler_depth: int = 4
    resampler_heads: int | None = None  # default: resampler_dim // 64 (at least 1)
    expression_streams: str = "image"  # "image", "code" or "both"
    expression_encoder: str | None = None
    num_expression_code_tokens: int = 4
    resampler_queries: str = "learned"  # "learned" or "grid" (position-preserving), see ExpressionResampler
    resampler_bottleneck: int | None = None
    expression_code_head: bool = False  # image stream: a head reading the code back (Stage1Config's auxiliary loss)
    seed: int = 0

    def build_expression_encoder(self):
        """The ``expression_encoder``, or None when not given."""
        from ..expression import load_expression_encoder

        return load_expression_encoder(self.expression_encoder) if self.expression_encoder else None

    def build(self, pipe, face=None, path: str | None = None) -> EmojiDiffAdapter:
        """Load `path` (or ``self.path``), else a new adapter from ``pipe.unet``. With the run's face analyzer
        `face`, a new adapter records its recognizer's name and width, and a loaded one must match them."""
        from ..face_models.protocols import check_adapter_recognizer

        recognizer, embed_dim = getattr(face, "recognizer_name", None), getattr(face, "embedding_dim", None)
        path = path or self.path
        if path:
            adapter = EmojiDiffAdapter.from_pretrained(path)
            if face is not None:
                check_adapter_recognizer(adapter.config, recognizer, embed_dim, "recognizer / face_pack")
            return adapter
        streams = self.expression_streams
        needs_codes = streams != "image" or self.expression_code_head
        encoder = self.build_expression_encoder() if needs_codes else None
        if needs_codes and encoder is None:
            what = f"`expression_streams={streams!r}`" if streams != "image" else "`expression_code_head`"
            raise ValueError(f"{what} needs an `expression_encoder` (module:factory).")
        if streams != "code" and pipe.image_encoder is None:
            raise ValueError("The pipeline has no `image_encoder`; the expression branch's image stream needs one.")
        torch.manual_seed(self.seed)
        width = pipe.image_encoder.config.hidden_size if pipe.image_encoder is not None else 1280
        dim = self.resampler_dim or width
        return EmojiDiffAdapter.from_unet(
            pipe.unet,
            identity_layers=self.identity_layers,
            expression_layers=self.expression_layers,
            num_identity_tokens=self.num_identity_tokens,
            num_expression_tokens=self.num_expression_tokens,
            image_embed_dim=width,
            resampler_dim=dim,
            resampler_depth=self.resampler_depth,
            resampler_heads=self.resampler_heads or max(1, dim // 64),
            expression_streams=streams,
            expression_code_dim=None if encoder is None else encoder.code_dim,
            expression_encoder=None if encoder is None else encoder.name,
            num_expression_code_tokens=self.num_expression_code_tokens,
            resampler_queries=self.resampler_queries,
            resampler_bottleneck=self.resampler_bottleneck,
            expression_code_head=self.expression_code_head,
            **({} if embed_dim is None else {"identity_embed_dim": embed_dim}),
            identity_encoder=recognizer,
        )


@dataclass
class TripletSource:
    """A run's triplets: a manifest (``triplets``), or same-identity triplets built from a collection manifest
    (``same_identity_from``, ``num_references`` references each, shuffled by ``seed``); ``strip_prompt_words`` are
    removed from the prompts (e.g. expression words, so training matches word-free prompts)."""

    triplets: str | None = None
    same_identity_from: str | None = None
    num_references: int = 2
    seed: int = 0
    strip_prompt_words: tuple[str, ...] = ()

    def __post_init__(self):
        if (self.triplets is None) == (self.same_identity_from is None):
            raise ValueError(
                f"Give exactly one of `triplets` and `same_identity_from`, got {self.triplets!r} and "
                f"{self.same_identity_from!r}."
            )
        if self.num_references < 1:
            raise ValueError(f"`num_references` must be >= 1, got {self.num_references}.")

    def load(self, accelerator, output_dir) -> list:
        """The triplets; built ones are written to ``<output_dir>/triplets.jsonl`` by the main process and read
        back by all."""
        from .triplets import (
            read_collection,
            read_triplets,
            same_identity_triplets,
            strip_prompt_phrases,
            write_triplets,
        )

        output_dir = Path(output_dir)
        if self.same_identity_from:  # read and check the inputs before anything is written
            records = read_collection(self.same_identity_from, "`same_identity_from` collection")
            triplets = same_identity_triplets(
                records, Path(self.same_identity_from).parent, self.num_references, self.seed
            )
            if not triplets:
                raise ValueError(
                    f"`same_identity_from` collection {self.same_identity_from!r} gives no same-identity "
                    "triplet: no identity has two or more distinct photos."
                )
            output_dir.mkdir(parents=True, exist_ok=True)
            if accelerator.is_main_process:
                write_triplets(triplets, output_dir / "triplets.jsonl")
            accelerator.wait_for_everyone()
            triplets = read_triplets(output_dir / "triplets.jsonl")
        else:
            triplets = read_triplets(self.triplets)
            output_dir.mkdir(parents=True, exist_ok=True)
        if self.strip_prompt_words:
            triplets = strip_prompt_phrases(triplets, list(self.strip_prompt_words))
        return triplets


@dataclass
class TrainingRun:
    """Everything one stage-1 or ICA run needs. ``config`` holds the loop's settings (its ``max_steps`` is the
    run's length); ``expression_loss_model`` / ``identity_loss_model`` are ``module:factory`` specs of the
    differentiable face models the face losses read with (see :mod:`.face_losses`)."""

    pretrained_model: str
    output_dir: str
    data: TripletSource
    face: FaceFrontEnd
    config: Stage1Config
    adapter: AdapterSpec = field(default_factory=AdapterSpec)
    resolution: int = 1024
    resume_from_checkpoint: str | None = None
    expression_loss_model: str | None = None
    identity_loss_model: str | None = None
    mixed_precision: str = "no"  # "no", "fp16" or "bf16"

    def replace(self, **changes) -> TrainingRun:
        """A copy with `changes`; ``config=dict(...)`` / ``adapter=dict(...)`` / ``data=dict(...)`` change fields
        of those parts."""
        for name in ("config", "adapter", "data", "face"):
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)


def make_accelerator(mixed_precision: str = "no"):
    from accelerate import Accelerator

    # on a machine without CUDA, processes started by `accelerate launch --multi_gpu` / torchrun use gloo on CPU
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def build_face_loss_models(expression_loss_model: str | None, identity_loss_model: str | None) -> tuple:
    """(expression model or None, identity model or None), each a DifferentiableFaceModel from a module:factory."""
    from .face_losses import DifferentiableFaceModel
    from .idi import load_callable

    models = []
    for kind, spec in (("expression", expression_loss_model), ("identity", identity_loss_model)):
        model = load_callable(spec, f"{kind}_loss_model") if spec else None
        if model is not None and not isinstance(model, DifferentiableFaceModel):
            raise ValueError(
                f"`{kind}_loss_model` {spec!r} must return a DifferentiableFaceModel, got {type(model).__name__}."
            )
        models.append(model)
    return tuple(models)


def _prepare(run: TrainingRun):
    """Accelerator, triplets, pipeline, face analyzer, adapter and the encoders / face models of `run`, with the run
    folder checked before anything is written."""
    from ..pipeline import EmojiDiffPipeline
    from .checkpoints import prepare_run_folder

    accelerator = make_accelerator(run.mixed_precision)
    output_dir = Path(run.output_dir)
    if (
        not run.config.overwrite_output_dir
    ):  # refuse another run's folder before writing anything (else: cleared later)
        prepare_run_folder(output_dir, bool(run.resume_from_checkpoint), overwrite=False)
    triplets = run.data.load(accelerator, output_dir)
    logger.info("%d triplets", len(triplets))
    pipe = EmojiDiffPipeline.from_pretrained(run.pretrained_model).to(accelerator.device)
    face = run.face.build()
    adapter = run.adapter.build(pipe, face=face)  # records (or checks) the recognizer's name and width
    encoder = run.adapter.build_expression_encoder() if adapter.trains_on_expression_codes else None
    models = build_face_loss_models(run.expression_loss_model, run.identity_loss_model)
    return accelerator, triplets, pipe, face, adapter, encoder, models


def train_stage1_run(run: TrainingRun) -> list[float]:
    """Stage 1 (decoupled training, :func:`~.stage1.run_stage1`) as `run` describes it; returns the step losses."""
    from .stage1 import run_stage1

    accelerator, triplets, pipe, face, adapter, encoder, (expression_model, identity_model) = _prepare(run)
    return run_stage1(
        accelerator,
        pipe,
        adapter,
        triplets,
        face,
        run.resolution,
        Path(run.output_dir),
        run.config,
        run.resume_from_checkpoint,
        expression_encoder=encoder,
        expression_loss_model=expression_model,
        identity_loss_model=identity_model,
    )


def train_ica_run(run: TrainingRun, ani: AniConfig) -> tuple[list[float], dict]:
    """ICA (stage 2, :func:`~.ica.run_ica`) from the stage-1 adapter at ``run.adapter.path``; returns (losses, the
    ANI result)."""
    from .ica import run_ica

    if not run.adapter.path:
        raise ValueError("ICA fine-tunes a stage-1 adapter: set `adapter.path` to a stage-1 adapter folder.")
    accelerator, triplets, pipe, face, adapter, encoder, (expression_model, identity_model) = _prepare(run)
    return run_ica(
        accelerator,
        pipe,
        adapter,
        triplets,
        face,
        run.resolution,
        Path(run.output_dir),
        run.config,
        ani,
        run.resume_from_checkpoint,
        expression_encoder=encoder,
        expression_loss_model=expression_model,
        identity_loss_model=identity_model,
    )


@dataclass
class IDISettings:
    """ID-irrelevant Data Iteration around a :class:`TrainingRun`: each round generates ``pairs_per_round`` pairs
    with the current adapter, swaps their identity (``swapper``: "diffusion" re-identification, or "inswapper" with
    ``swapper_model``), keeps those that pass ``filters`` (scored by ``expression_estimator``, ``module:factory``)
    and retrains stage 1 for ``steps_per_round`` on every round's accepted pairs so far."""

    expression_estimator: str
    rounds: int = 2
    pairs_per_round: int = 1000
    shard_size: int = 64
    generation_batch_size: int = 8  # pairs per pipeline (and swapper) call
    steps_per_round: int = 2000  # 0: data only
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    filters: FilterConfig = field(default_factory=FilterConfig)
    swapper: str = "diffusion"
    swapper_model: str | None = None  # inswapper_128.onnx for swapper="inswapper"
    reid_strength: float = 0.5  # img2img strength of the diffusion swapper


def run_idi(run: TrainingRun, idi: IDISettings) -> list[dict]:
    """IDI rounds under ``run.output_dir`` (``round-r/data``: sharded triplets and ``round_stats.json``;
    ``round-r/stage1``: the retrained adapter, started from the round's generation adapter). Pairs are drawn from
    the collection ``run.data.same_identity_from``; round 0 generates with ``run.adapter`` (its ``path``), round r
    with round r-1's adapter; ``run.config`` is the per-round stage-1 recipe. Everything resumes: finished shards
    and rounds are skipped, training continues from its latest checkpoint. Returns each round's stats."""
    import json

    from ..pipeline import EmojiDiffPipeline
    from .idi import DiffusionReIDBackend, IDIRound, INSwapperBackend, RoundConfig, assemble_round, load_callable
    from .stage1 import run_stage1
    from .triplets import read_collection, read_triplets, strip_prompt_phrases

    if not run.data.same_identity_from:
        raise ValueError("IDI draws its pairs from a collection: set `data.same_identity_from` to its manifest.")
    if idi.swapper == "inswapper" and not idi.swapper_model:
        raise ValueError("`swapper='inswapper'` needs `swapper_model` (the inswapper_128.onnx file you provide).")
    accelerator = make_accelerator(run.mixed_precision)
    out = Path(run.output_dir)
    collection = run.data.same_identity_from
    records = read_collection(collection, "`same_identity_from` collection")
    face = run.face.build(need_detector=True)
    scorer = load_callable(idi.expression_estimator, "expression_estimator")
    summaries = []
    for r in range(idi.rounds):
        round_dir = out / f"round-{r}"
        generation_adapter = run.adapter.path if r == 0 else str(out / f"round-{r - 1}" / "stage1" / "adapter")
        adapter_spec = dataclasses.replace(run.adapter, path=generation_adapter)
        pipe = EmojiDiffPipeline.from_pretrained(run.pretrained_model).to(accelerator.device)
        pipe.set_emoji_adapter(adapter_spec.build(pipe, face=face))
        encoder = adapter_spec.build_expression_encoder() if pipe.emoji_adapter.trains_on_expression_codes else None
        pipe.set_expression_encoder(encoder if pipe.emoji_adapter.uses_code_stream else None)
        swapper = (
            INSwapperBackend(idi.swapper_model)
            if idi.swapper == "inswapper"
            else DiffusionReIDBackend(pipe, idi.reid_strength, idi.num_inference_steps, idi.guidance_scale)
        )
        config = RoundConfig(
            num_pairs=idi.pairs_per_round,
            shard_size=idi.shard_size,
            num_references=run.data.num_references,
            seed=run.data.seed * 1000 + r,
            num_inference_steps=idi.num_inference_steps,
            guidance_scale=idi.guidance_scale,
            resolution=run.resolution,
            generation_batch_size=idi.generation_batch_size,
            strip_prompt_words=tuple(run.data.strip_prompt_words),
        )
        idi_round = IDIRound(pipe, face, scorer, swapper, idi.filters, config, Path(collection).parent)
        if not (round_dir / "data" / "round_stats.json").exists():
            idi_round.run(records, round_dir / "data", accelerator.process_index, accelerator.num_processes)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                assemble_round(round_dir / "data", idi_round.num_shards())
            accelerator.wait_for_everyone()
        summary = json.loads((round_dir / "data" / "round_stats.json").read_text())
        summaries.append(summary)
        logger.info("IDI round %d: %s", r, summary)
        if idi.steps_per_round == 0 or (round_dir / "stage1" / "adapter" / "config.json").exists():
            continue
        triplets = [
            t
            for k in range(r + 1)
            if (out / f"round-{k}" / "data" / "triplets.jsonl").stat().st_size
            for t in read_triplets(out / f"round-{k}" / "data" / "triplets.jsonl")
        ]
        if not triplets:
            raise RuntimeError(f"IDI accepted no pair up to round {r}; loosen the filters ({idi.filters}).")
        if run.data.strip_prompt_words:
            triplets = strip_prompt_phrases(triplets, list(run.data.strip_prompt_words))
        stage1_dir = round_dir / "stage1"
        resume = "latest" if any(stage1_dir.glob("checkpoint-*[0-9]")) else None
        # the round's own folder: a run cut before its first checkpoint restarts from scratch
        stage1_config = dataclasses.replace(
            run.config, max_steps=idi.steps_per_round, overwrite_output_dir=resume is None
        )
        run_stage1(
            accelerator,
            pipe,
            adapter_spec.build(pipe, face=face),
            triplets,
            face,
            run.resolution,
            stage1_dir,
            stage1_config,
            resume,
            expression_encoder=encoder,
        )
    return summaries


__all__ = [
    "AdapterSpec",
    "AniConfig",
    "FaceFrontEnd",
    "FilterConfig",
    "IDISettings",
    "Stage1Config",
    "TrainingRun",
    "TripletSource",
    "build_face_loss_models",
    "make_accelerator",
    "run_idi",
    "train_ica_run",
    "train_stage1_run",
]
