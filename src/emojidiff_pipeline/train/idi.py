"""ID-irrelevant Data Iteration (IDI): manufacture cross-identity expression pairs.

One round (METHOD.md, "Stage 1"): for a template T of person A and reference(s) R of person B (A != B), generate
with the current adapter (expression from T, identity from R); alter the identity toward B with a swapper that
keeps the expression; keep the result only if its expression matches T, its identity matches B and it does not
resemble A; write (T, R, result, prompt) triplets. Filters use train-side instruments only.

Output is sharded: shard k holds pairs [k*S, (k+1)*S); its images are written first, then its manifest lines and
stats atomically (temp file + rename). A restarted round skips finished shards and redoes unfinished ones, so a
SIGKILL loses no finished pair and duplicates none. Pairs go through the pipeline and the swapper in batches of
`generation_batch_size`; each image is seeded by (seed, pair index) alone, so a redone shard writes the same bytes
(another batch size the same images up to float rounding). Shards are split across accelerate processes (shard k ->
process k % N).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL.Image
import torch

from .atomic import atomic_path, write_text_atomic
from .triplets import (
    Triplet,
    group_by_identity,
    open_rgb,
    read_triplets,
    strip_phrases,
    unique_records,
    write_triplets,
)

logger = logging.getLogger(__name__)

ExpressionScorer = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]  # (images, kps) -> (N, K)


def load_callable(spec: str, arg_name: str):
    """``"package.module:factory"`` -> ``factory()``: how scripts take pluggable instruments (the library's one
    loader, :func:`emojidiff_pipeline.hooks.load_factory`)."""
    from ..hooks import load_factory

    return load_factory(spec, arg_name)


# --------------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """Template photo of identity A, reference photos of identity B (A != B), and the prompt to generate with."""

    index: int
    template: dict
    references: tuple
    prompt: str


def plan_pairs(
    records: Sequence[dict], num_pairs: int, num_references: int = 2, seed: int = 0, strip_words: Sequence[str] = ()
) -> list[Pair]:
    """Deterministic cross-identity pairs from a photo collection (records: path, identity, caption[, kps]).

    The prompt is the first reference's caption (B's appearance and style; A's caption would describe A) without
    the phrases in `strip_words`: B's expression words would pull the generated face away from A's expression.
    """
    by_identity = group_by_identity(records)
    identities = sorted(by_identity)
    if len(identities) < 2:
        raise ValueError(f"IDI needs photos of at least 2 identities, got {len(identities)}.")
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(num_pairs):
        a, b = rng.choice(len(identities), size=2, replace=False)
        photos_a, photos_b = by_identity[identities[a]], by_identity[identities[b]]
        template = photos_a[rng.integers(len(photos_a))]
        refs = [photos_b[i] for i in rng.permutation(len(photos_b))[:num_references]]
        pairs.append(Pair(index, template, tuple(refs), strip_phrases(refs[0]["caption"], strip_words)))
    return pairs


# --------------------------------------------------------------------------------------------- swappers
class Swapper(Protocol):
    def __call__(
        self,
        images: Sequence[np.ndarray],
        kps: Sequence[np.ndarray],
        identity_embeddings: Sequence[np.ndarray],
        seeds: Sequence[int],
    ) -> list[np.ndarray]:
        """Alter the face in each of `images` (uint8 HxWx3, its face at `kps[i]` (5, 2)) toward the identity of the
        normed embedding `identity_embeddings[i]` (512,); return one uint8 HxWx3 each, with the expression kept.
        A batch, so a diffusion swapper denoises all of them in one call."""


class INSwapperBackend:
    """insightface's INSwapper (``inswapper_128.onnx``, a model file you provide; no download)."""

    def __init__(self, model_path: str | os.PathLike):
        from ..face_loading import import_insightface

        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"`swapper_model`={str(model_path)!r} does not exist (inswapper_128.onnx).")
        import_insightface()
        from insightface.model_zoo import get_model

        self.model = get_model(str(path))
        if type(self.model).__name__ != "INSwapper":
            raise ValueError(
                f"`swapper_model`={str(model_path)!r} is not an INSwapper model (insightface routed it to "
                f"{type(self.model).__name__})."
            )

    def __call__(self, images, kps, identity_embeddings, seeds):
        return [self._swap(image, k, e) for image, k, e in zip(images, kps, identity_embeddings, strict=True)]

    def _swap(self, image, kps, identity_embedding):
        from insightface.app.common import Face

        target = Face(kps=np.asarray(kps, np.float32), bbox=np.r_[np.min(kps, 0), np.max(kps, 0)].astype(np.float32))
        source = Face(embedding=np.asarray(identity_embedding, np.float32))  # normed_embedding derives from it
        out_bgr = self.model.get(np.ascontiguousarray(image[:, :, ::-1]), target, source, paste_back=True)
        return np.ascontiguousarray(out_bgr[:, :, ::-1])


class DiffusionReIDBackend:
    """Re-identification with no extra model: image-to-image from the image itself with the identity branch only
    (expression branch off, low strength so the expression survives), pasted back inside the face mask."""

    def __init__(
        self,
        pipe,
        strength: float = 0.5,
        num_inference_steps: int = 20,
        guidance_scale: float = 5.0,
        mask_size: int = 112,
    ):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"`reid_strength` must be in (0, 1], got {strength}.")
        from diffusers import StableDiffusionXLImg2ImgPipeline

        components = {k: v for k, v in pipe.components.items() if k != "emoji_adapter"}
        self.img2img = StableDiffusionXLImg2ImgPipeline(**components)
        self.pipe, self.strength, self.steps, self.guidance, self.mask_size = (
            pipe,
            strength,
            num_inference_steps,
            guidance_scale,
            mask_size,
        )
        self.prompt = ""

    def __call__(self, images, kps, identity_embeddings, seeds):
        import cv2

        from ..attention import CONDITIONING_KWARG
        from ..face_geometry import arcface_template, face_mask

        if not images:
            return []
        do_cfg, n = self.guidance > 1, len(images)
        embeds = torch.as_tensor(np.stack([np.asarray(e, np.float32) for e in identity_embeddings]))[:, None]
        conditioning = self.pipe.prepare_conditioning(
            n, 1, do_cfg, embeds, None, 1.0, 0.0, None, self.pipe._execution_device
        )
        out = self.img2img(
            [self.prompt] * n,
            image=[PIL.Image.fromarray(image) for image in images],
            strength=self.strength,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="np",
            cross_attention_kwargs={CONDITIONING_KWARG: conditioning},
        ).images
        results = []
        for image, face_kps, generated in zip(images, kps, out, strict=True):
            generated = (generated * 255).round().clip(0, 255).astype(np.uint8)
            # face mask in image coordinates: the aligned-space mask warped back through the 5-point similarity
            matrix, _ = cv2.estimateAffinePartial2D(arcface_template(self.mask_size), np.asarray(face_kps, np.float32))
            h, w = image.shape[:2]
            mask = cv2.warpAffine(face_mask(self.mask_size), matrix, (w, h))[..., None]
            results.append((mask * generated + (1 - mask) * image).round().clip(0, 255).astype(np.uint8))
        return results


# --------------------------------------------------------------------------------------------- filters
@dataclass
class FilterConfig:
    max_expression_error: float = 0.08  # mean |E(result) - E(template)| over the expression factors
    min_identity_similarity: float = 0.5  # cos(F(result), F(references of B))
    max_template_similarity: float = 0.3  # cos(F(result), F(template of A))


@dataclass
class Scores:
    expression_error: float
    identity_similarity: float
    template_similarity: float


def rejection_reasons(scores: Scores, config: FilterConfig) -> list[str]:
    reasons = []
    if scores.expression_error > config.max_expression_error:
        reasons.append("expression")
    if scores.identity_similarity < config.min_identity_similarity:
        reasons.append("identity_to_reference")
    if scores.template_similarity > config.max_template_similarity:
        reasons.append("template_identity_leak")
    return reasons


# --------------------------------------------------------------------------------------------- a round
@dataclass
class RoundConfig:
    num_pairs: int
    shard_size: int = 64
    num_references: int = 2
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    resolution: int | None = None
    generation_batch_size: int = 8  # pairs per pipeline (and swapper) call
    strip_prompt_words: tuple[str, ...] = ()  # dropped from the generation prompts (e.g. expression words)

    def __post_init__(self):
        for name in ("num_pairs", "shard_size", "num_references", "num_inference_steps", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")


class IDIRound:
    """Generate -> swap -> filter -> write, for one round, into `out_dir` (resumable, sharded).

    Args:
        pipe: an EmojiDiffPipeline with the current adapter.
        face_analyzer: finds keypoints in generated images and computes identity embeddings (train-side).
        expression_scorer: (images, kps) -> (N, K) expression factors (train-side instrument).
        swapper: a :class:`Swapper`.
    """

    def __init__(
        self,
        pipe,
        face_analyzer,
        expression_scorer: ExpressionScorer,
        swapper: Swapper,
        filters: FilterConfig,
        config: RoundConfig,
        collection_root: str | os.PathLike,
    ):
        self.pipe, self.face, self.expression, self.swapper = pipe, face_analyzer, expression_scorer, swapper
        self.filters, self.config, self.root = filters, config, Path(collection_root)

    def _image(self, record) -> np.ndarray:
        return np.asarray(open_rgb(self.root / record["path"], "collection image"))

    def _process_batch(self, pairs: Sequence[Pair], images_dir: Path) -> list[tuple[Triplet | None, dict]]:
        """Generate, swap, score and filter a batch of pairs (one pipeline call, one swapper call); per pair, its
        triplet (None when rejected) and its stats. Image i is seeded by its pair index alone, so a batch's
        members do not depend on each other's seeds."""
        seeds = [self.config.seed * 1_000_003 + pair.index for pair in pairs]
        templates = [self._image(pair.template) for pair in pairs]
        ref_embeds, template_embeds = [], []
        for pair, template in zip(pairs, templates, strict=True):
            refs = [self._image(r) for r in pair.references]
            ref_embeds.append(
                self.face.reference_embedding(
                    refs, f"references of pair {pair.index}", [r.get("kps") for r in pair.references]
                )
            )
            template_embeds.append(
                self.face.identity_embedding(template, f"template of pair {pair.index}", kps=pair.template.get("kps"))
            )
        size = self.config.resolution
        generated = self.pipe(
            [pair.prompt for pair in pairs],
            identity_embeds=torch.as_tensor(np.stack(ref_embeds))[:, None],
            **self._template_inputs(templates, [pair.template.get("kps") for pair in pairs]),
            num_inference_steps=self.config.num_inference_steps,
            guidance_scale=self.config.guidance_scale,
            height=size,
            width=size,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="np",
        ).images
        generated = [(g * 255).round().clip(0, 255).astype(np.uint8) for g in generated]
        outcomes: list = [None] * len(pairs)
        found = []  # (batch position, keypoints) of the generated images with a face
        for i, (pair, image) in enumerate(zip(pairs, generated, strict=True)):
            kps = self._face_kps(image, f"generated image of pair {pair.index}")
            if kps is None:
                outcomes[i] = (None, {"index": pair.index, "rejected": ["no_face"]})
            else:
                found.append((i, kps))
        swapped = self.swapper(
            [generated[i] for i, _ in found],
            [kps for _, kps in found],
            [ref_embeds[i] for i, _ in found],
            [seeds[i] for i, _ in found],
        )
        for (i, _), result in zip(found, swapped, strict=True):
            outcomes[i] = self._score(pairs[i], templates[i], result, ref_embeds[i], template_embeds[i], images_dir)
        return outcomes

    def _face_kps(self, image: np.ndarray, input_name: str):
        """The selected face's keypoints (5, 2) in `image`, or None when no face is found."""
        faces = self.face.detect(image, input_name)
        return self.face.select(faces, input_name).kps if faces else None

    def _score(
        self, pair: Pair, template: np.ndarray, result: np.ndarray, ref_embed, template_embed, images_dir: Path
    ) -> tuple[Triplet | None, dict]:
        """Filter a swapped result against its pair; an accepted one is written and returned as a triplet."""
        kps = self._face_kps(result, f"swapped image of pair {pair.index}")
        if kps is None:
            return None, {"index": pair.index, "rejected": ["no_face"]}
        result_embed = self.face.identity_embedding(result, "result", kps=kps)
        exp_result, exp_template = self.expression(
            [result, template], [kps, np.asarray(pair.template["kps"]) if "kps" in pair.template else None]
        )
        scores = Scores(
            expression_error=float(np.abs(exp_result - exp_template).mean()),
            identity_similarity=float(result_embed @ ref_embed),
            template_similarity=float(result_embed @ template_embed),
        )
        reasons = rejection_reasons(scores, self.filters)
        stats = {"index": pair.index, "rejected": reasons, **asdict(scores)}
        if reasons:
            return None, stats
        path = images_dir / f"{pair.index:07d}.png"
        with atomic_path(path) as tmp:
            PIL.Image.fromarray(result).save(tmp, format="PNG")
        triplet = Triplet(
            template=str(self.root / pair.template["path"]),
            references=[str(self.root / r["path"]) for r in pair.references],
            target=str(path),
            prompt=pair.prompt,
            template_kps=pair.template.get("kps"),
            reference_kps=[r["kps"] for r in pair.references] if all("kps" in r for r in pair.references) else None,
            extra={
                "template_identity": pair.template["identity"],
                "target_identity": pair.references[0]["identity"],
                "pair": pair.index,
                **asdict(scores),
            },
            target_kps=np.asarray(kps, dtype=np.float64).round(3).tolist(),
        )
        return triplet, stats

    def _template_inputs(self, templates: Sequence[np.ndarray], kps: Sequence) -> dict[str, torch.Tensor]:
        """The adapter's expression inputs for templates with known keypoints (None: detected), through the
        pipeline's own encoding paths: image-encoder tokens (N, P, E) of the aligned, masked crops and/or
        expression codes (N, K)."""
        from ..face_geometry import masked_template

        adapter, out = self.pipe.emoji_adapter, {}
        if adapter.uses_image_stream:
            crops = []
            for template, k in zip(templates, kps, strict=True):
                crop, mask = self.face.expression_crop(
                    template, "template", kps=k, geometry=adapter.config.template_crop
                )
                crops.append(masked_template(crop, mask))
            out["expression_embeds"] = self.pipe.encode_template_crops(crops)
        if adapter.uses_code_stream:
            if self.pipe.expression_encoder is None:
                raise ValueError("The adapter has a code stream: set the pipeline's expression encoder for IDI.")
            codes = self.pipe.expression_encoder(list(templates), [None if k is None else np.asarray(k) for k in kps])
            out["expression_codes"] = torch.as_tensor(codes, dtype=torch.float32)
        return out

    def run(
        self, records: Sequence[dict], out_dir: str | os.PathLike, process_index: int = 0, num_processes: int = 1
    ) -> list[int]:
        """Process this process's unfinished shards; returns the shard ids it finished now."""
        out_dir = Path(out_dir)
        records = unique_records(records, self.root)  # a photo listed twice would be drawn twice as a reference
        config = self.config
        pairs = plan_pairs(records, config.num_pairs, config.num_references, config.seed, config.strip_prompt_words)
        shards = [pairs[i : i + self.config.shard_size] for i in range(0, len(pairs), self.config.shard_size)]
        (out_dir / "shards").mkdir(parents=True, exist_ok=True)
        done_now = []
        for shard_id, shard in enumerate(shards):
            if shard_id % num_processes != process_index or (out_dir / "shards" / f"{shard_id:05d}.jsonl").exists():
                continue
            images_dir = out_dir / "images" / f"{shard_id:05d}"
            images_dir.mkdir(parents=True, exist_ok=True)
            triplets, stats = [], []
            step = self.config.generation_batch_size
            for batch in (shard[i : i + step] for i in range(0, len(shard), step)):
                start = time.perf_counter()
                outcomes = self._process_batch(batch, images_dir)
                seconds = (time.perf_counter() - start) / len(batch)  # the batch's share, for the throughput log
                for triplet, pair_stats in outcomes:
                    stats.append({**pair_stats, "seconds": round(seconds, 4)})
                    if triplet is not None:
                        triplets.append(triplet)
            write_text_atomic(out_dir / "shards" / f"{shard_id:05d}.stats.json", json.dumps(stats))
            write_triplets(triplets, out_dir / "shards" / f"{shard_id:05d}.jsonl")  # atomic; marks the shard done
            logger.info("IDI shard %d: kept %d of %d pairs.", shard_id, len(triplets), len(shard))
            done_now.append(shard_id)
        return done_now

    def num_shards(self) -> int:
        return -(-self.config.num_pairs // self.config.shard_size)


def assemble_round(out_dir: str | os.PathLike, num_shards: int) -> dict:
    """Join finished shards (in order) into ``triplets.jsonl`` and ``round_stats.json``, atomically."""
    out_dir = Path(out_dir)
    missing = [k for k in range(num_shards) if not (out_dir / "shards" / f"{k:05d}.jsonl").exists()]
    if missing:
        raise RuntimeError(f"IDI round in {out_dir} is not finished: shards {missing[:10]} are missing.")
    triplets, stats = [], []
    for k in range(num_shards):
        shard = out_dir / "shards" / f"{k:05d}.jsonl"
        if shard.read_text().strip():
            triplets.extend(read_triplets(shard))
        stats.extend(json.loads((out_dir / "shards" / f"{k:05d}.stats.json").read_text()))
    write_triplets(triplets, out_dir / "triplets.jsonl")
    reasons: dict[str, int] = defaultdict(int)
    for s in stats:
        for r in s["rejected"]:
            reasons[r] += 1
    seconds = sum(s.get("seconds", 0.0) for s in stats)  # summed over processes: compute time, not wall-clock
    summary = {
        "pairs": len(stats),
        "accepted": len(triplets),
        "yield": len(triplets) / max(1, len(stats)),
        "rejected_by": dict(sorted(reasons.items())),
        "compute_seconds": round(seconds, 1),
        "accepted_per_compute_minute": round(60 * len(triplets) / seconds, 2) if seconds else None,
    }
    write_text_atomic(out_dir / "round_stats.json", json.dumps(summary, indent=1))  # last: marks the round done
    return summary
