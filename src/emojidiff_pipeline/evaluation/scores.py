"""Evaluation with eval-side instruments only: identity similarity, expression error, identity and style leakage.

A *case* is (reference image(s) of person B, expression template of person A != B, prompt). For every generated
image ``g``:

- identity similarity: ``cos(F(g), F(reference))``;
- expression error: mean absolute difference of the expression factors ``|E(g) - E(template)|``;
- identity leakage: ``cos(F(g), F(template)) - mean_s cos(F(g), F(stranger_s))`` over the other cases' people;
- style leakage (when a style classifier is given): the share of style heads on which the output shows the
  template's style where the prompt asked for another one;
- emotion agreement (when an emotion classifier is given, e.g. fer's): ``sum_k min(P(g)_k, P(template)_k)``, one minus
  the total variation distance between the two emotion distributions (1: the same), and the share of cases whose
  most likely emotion is the template's;
- image quality: face sharpness (variance of the Laplacian of the aligned grey face crop; compare it with real
  images of the same cases) and, when ``Instruments.real_identity_features`` is given, the Frechet distance between
  the generated faces' identity features and those real ones.

``F``, ``E`` and the style classifier must be evaluation-side instruments that played no part in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Case:
    reference: np.ndarray  # (H, W, 3) uint8, person B
    template: np.ndarray  # (H, W, 3) uint8, person A
    prompt: str
    reference_person: str
    template_person: str
    prompt_style: dict = field(default_factory=dict)  # head -> value the prompt asks for
    template_style: dict = field(default_factory=dict)  # head -> value the template shows
    reference_kps: np.ndarray | None = None
    template_kps: np.ndarray | None = None
    template_factors: np.ndarray | None = None  # (K,) ground-truth expression of the template, when known


@dataclass
class Instruments:
    """Eval-side measuring devices. `face` is a FaceAnalyzer; `expression(images, kps)` -> (N, K)."""

    face: Any
    expression: Callable[[Sequence[np.ndarray], Sequence[Any]], np.ndarray]
    style: Callable[[Sequence[np.ndarray]], dict[str, list[str]]] | None = None
    expression_fields: Sequence[str] | None = None  # names of the K expression outputs, for per-factor errors
    real_identity_features: np.ndarray | None = None  # (M, D) F of real images, for the Frechet distance
    # `emotion(images, kps)` -> (N, C) class probabilities (NaN rows where it finds no face), for the emotion columns
    emotion: Callable[[Sequence[np.ndarray], Sequence[Any]], np.ndarray] | None = None


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets (N, D) and (M, D) (Heusel et al. 2017, FID):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"Frechet distance needs two (N >= 2, D) feature sets of one width, got {a.shape}, {b.shape}."
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    return float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.sqrt(np.clip(cross, 0, None)).sum()
    )


def face_sharpness(image: np.ndarray, kps: Any, size: int = 112) -> float:
    """Variance of the 4-neighbour Laplacian of the grey, ArcFace-aligned face crop (`size`, values 0-255): higher is
    sharper. image (H, W, 3) uint8, kps (5, 2)."""
    from ..face_geometry import align_face

    grey = align_face(image, kps, size).astype(np.float64).mean(-1)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(lap.var())


def group_means(values: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """{group: mean of its `values`}, groups in first-seen order."""
    by: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        by.setdefault(g, []).append(v)
    return {g: float(np.mean(v)) for g, v in by.items()}


def standard_error_over(values: Sequence[float], groups: Sequence[str]) -> float:
    """Standard error of the mean of `values` over `groups` (e.g. templates): group means, then std / sqrt(G)."""
    means = np.array(list(group_means(values, groups).values()))
    return float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")


def paired_difference(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, int]:
    """Mean of a[g] - b[g] over the groups both rows scored (e.g. two rows' per-template means on the same cases),
    its standard error and the number of groups: the difference's noise without the groups' own spread."""
    shared = [g for g in a if g in b]
    if len(shared) < 2:
        raise ValueError(f"A paired difference needs >= 2 shared groups, got {len(shared)}.")
    d = np.array([a[g] - b[g] for g in shared])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))), len(d)


def _embed(face, image, kps=None) -> np.ndarray | None:
    try:
        return face.identity_embedding(image, "image", kps=kps)
    except ValueError:  # no face: counted as a failure, not silently scored
        return None


def score_row(generated: Sequence[np.ndarray], cases: Sequence[Case], inst: Instruments) -> dict:
    """Metrics of one row (one generated image per case), means over cases with a detected face."""
    ref_emb = {c.reference_person: _embed(inst.face, c.reference, c.reference_kps) for c in cases}
    tpl_emb = {c.template_person: _embed(inst.face, c.template, c.template_kps) for c in cases}
    people = {**ref_emb, **tpl_emb}
    id_sim, leak, exp_err, style_leak, style_follow, failures = [], [], [], [], [], 0
    id_groups, leak_groups, exp_abs = [], [], np.zeros((0, 0))
    gen_kps, sharp, sharp_groups, features = [], [], [], []
    for g, c in zip(generated, cases):
        faces = inst.face.detect(g, "generated")
        if not faces:
            failures += 1
            gen_kps.append(None)
            continue
        kps = inst.face.select(faces, "generated").kps
        gen_kps.append(kps)
        e = inst.face.identity_embedding(g, "generated", kps=kps)
        sharp.append(face_sharpness(g, kps))
        sharp_groups.append(c.template_person)
        features.append(e)
        if ref_emb[c.reference_person] is not None:
            id_sim.append(float(e @ ref_emb[c.reference_person]))
            id_groups.append(c.template_person)
        strangers = [
            v for p, v in people.items() if v is not None and p not in (c.template_person, c.reference_person)
        ]
        if tpl_emb[c.template_person] is not None and strangers:
            leak.append(float(e @ tpl_emb[c.template_person]) - float(np.mean([e @ s for s in strangers])))
            leak_groups.append(c.template_person)
    ok = [i for i, k in enumerate(gen_kps) if k is not None]
    expression_failures = 0
    if ok:
        est = np.asarray(
            inst.expression(
                [generated[i] for i in ok] + [cases[i].template for i in ok],
                [gen_kps[i] for i in ok] + [cases[i].template_kps for i in ok],
            )
        )
        exp_abs = np.abs(est[: len(ok)] - est[len(ok) :])  # (n_ok, K)
        read = np.isfinite(exp_abs).all(axis=1)  # an estimator may return NaN where it finds no face
        expression_failures = int((~read).sum())
        ok, exp_abs = [i for i, r in zip(ok, read) if r], exp_abs[read]
        exp_err = list(exp_abs.mean(axis=1))
    if inst.style is not None:
        labels = inst.style(list(generated))
        for i, c in enumerate(cases):
            for head, asked in c.prompt_style.items():
                shown = c.template_style.get(head)
                if shown is None or shown == asked:
                    continue
                style_leak.append(float(labels[head][i] == shown))
                style_follow.append(float(labels[head][i] == asked))

    def mean(xs):
        return float(np.mean(xs)) if xs else float("nan")

    emotion = _emotion_scores(generated, cases, gen_kps, inst) if inst.emotion is not None else {}
    per_factor = {}
    if inst.expression_fields is not None and exp_abs.size:
        per_factor = {name: float(exp_abs[:, k].mean()) for k, name in enumerate(inst.expression_fields)}
    return {
        "identity_similarity": mean(id_sim),
        "identity_similarity_se": standard_error_over(id_sim, id_groups) if id_sim else float("nan"),
        "expression_error": mean(exp_err),
        "expression_error_se": standard_error_over(exp_err, [cases[i].template_person for i in ok])
        if ok
        else float("nan"),
        "expression_error_per_factor": per_factor,
        # per-template means, for paired comparisons of rows scored on the same cases (paired_difference)
        "expression_error_per_template": group_means(exp_err, [cases[i].template_person for i in ok]),
        "identity_similarity_per_template": group_means(id_sim, id_groups),
        "identity_leakage": mean(leak),
        "identity_leakage_se": standard_error_over(leak, leak_groups),
        "identity_leakage_per_template": group_means(leak, leak_groups),
        "style_leakage": mean(style_leak),
        "style_following": mean(style_follow),
        "face_sharpness": mean(sharp),
        "face_sharpness_se": standard_error_over(sharp, sharp_groups) if sharp else float("nan"),
        "frechet_to_real": (
            frechet_distance(np.stack(features), inst.real_identity_features)
            if inst.real_identity_features is not None and len(features) > 1
            else float("nan")
        ),
        "no_face_rate": failures / max(1, len(cases)),
        "expression_unread_rate": expression_failures / max(1, len(cases)),
        **emotion,
        "num_cases": len(cases),
    }


def _emotion_scores(
    generated: Sequence[np.ndarray], cases: Sequence[Case], gen_kps: Sequence[Any], inst: Instruments
) -> dict:
    """Emotion agreement of the outputs with a face (``gen_kps`` not None) and their templates: the mean of
    ``sum_k min(p_k, q_k)`` (1 - total variation distance, in [0, 1]) and of ``argmax p == argmax q``, over cases
    where both distributions read, with standard errors over templates. Templates without keypoints get the
    eval-side detector's (so output and template are cropped alike)."""
    tpl_kps: dict[int, Any] = {}
    for c in cases:
        if id(c.template) not in tpl_kps:
            kps = c.template_kps
            if kps is None:
                faces = inst.face.detect(c.template, "template")
                kps = inst.face.select(faces, "template").kps if faces else None
            tpl_kps[id(c.template)] = kps
    detected = [i for i, k in enumerate(gen_kps) if k is not None]
    agree, top1, groups = [], [], []
    if detected:
        images = [generated[i] for i in detected] + [cases[i].template for i in detected]
        kps = [gen_kps[i] for i in detected] + [tpl_kps[id(cases[i].template)] for i in detected]
        probs = np.asarray(inst.emotion(images, kps), dtype=np.float64)
        p, q = probs[: len(detected)], probs[len(detected) :]
        read = np.isfinite(p).all(axis=1) & np.isfinite(q).all(axis=1)
        agree = list(np.clip(np.minimum(p, q).sum(axis=1), 0.0, 1.0)[read])
        top1 = list((p.argmax(axis=1) == q.argmax(axis=1)).astype(np.float64)[read])
        groups = [cases[i].template_person for i, r in zip(detected, read) if r]

    def mean_se(xs):
        if not xs:
            return float("nan"), float("nan")
        return float(np.mean(xs)), standard_error_over(xs, groups)

    (a, a_se), (t, t_se) = mean_se(agree), mean_se(top1)
    return {
        "emotion_agreement": a,
        "emotion_agreement_se": a_se,
        "emotion_top1_agreement": t,
        "emotion_top1_agreement_se": t_se,
        "emotion_unread_rate": (len(detected) - len(agree)) / max(1, len(cases)),
    }


def same_person_similarity(pairs: Sequence[tuple[np.ndarray, np.ndarray, Any, Any]], face) -> float:
    """Mean cosine between two images of the same person (different expressions): the ceiling for identity."""
    sims = []
    for a, b, ka, kb in pairs:
        ea, eb = _embed(face, a, ka), _embed(face, b, kb)
        if ea is not None and eb is not None:
            sims.append(float(ea @ eb))
    return float(np.mean(sims)) if sims else float("nan")
