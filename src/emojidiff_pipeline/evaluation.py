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

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    from .face import align_face

    grey = align_face(image, kps, size).astype(np.float64).mean(-1)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(lap.var())


def standard_error_over(values: Sequence[float], groups: Sequence[str]) -> float:
    """Standard error of the mean of `values` over `groups` (e.g. templates): group means, then std / sqrt(G)."""
    by: dict[str, list[float]] = {}
    for v, g in zip(values, groups):
        by.setdefault(g, []).append(v)
    means = np.array([np.mean(v) for v in by.values()])
    return float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else float("nan")


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
    id_groups, exp_abs = [], np.zeros((0, 0))
    gen_kps, sharp, features = [], [], []
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
        features.append(e)
        if ref_emb[c.reference_person] is not None:
            id_sim.append(float(e @ ref_emb[c.reference_person]))
            id_groups.append(c.template_person)
        strangers = [
            v for p, v in people.items() if v is not None and p not in (c.template_person, c.reference_person)
        ]
        if tpl_emb[c.template_person] is not None and strangers:
            leak.append(float(e @ tpl_emb[c.template_person]) - float(np.mean([e @ s for s in strangers])))
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
        "identity_leakage": mean(leak),
        "style_leakage": mean(style_leak),
        "style_following": mean(style_follow),
        "face_sharpness": mean(sharp),
        "face_sharpness_se": standard_error_over(sharp, [cases[i].template_person for i in ok])
        if ok
        else float("nan"),
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


def _cell(row: dict, col: str, not_measured: Sequence[str]) -> str:
    value = row.get(col, float("nan"))
    if col in not_measured and np.isnan(value):
        return "n/a"
    se = row.get(f"{col}_se")
    return f"{value:.3f} +- {se:.3f}" if se is not None and np.isfinite(se) else f"{value:.3f}"


def write_report(
    rows: dict[str, dict],
    extra: dict,
    out_dir: str | Path,
    command: str,
    title: str,
    not_measured: Sequence[str] = (),
) -> Path:
    """results.json + results.md (a table of every row, standard errors over templates after +-) under `out_dir`.

    ``extra["reference_lines"]`` (rows scored on reference images, e.g. a neutral face and a perfect output) open
    the table; rows with ``emotion_agreement`` add the emotion columns; rows with per-factor expression errors get
    a second table; ``extra["template_probe"]`` (row ->
    :func:`template_use_probe`) a third. Columns named in `not_measured` show NaN as "n/a".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "results.json.tmp"
    tmp.write_text(json.dumps({"rows": rows, **extra, "command": command}, indent=1))
    tmp.replace(out_dir / "results.json")
    references = extra.get("reference_lines", {})
    everything = {**{f"*{k}*": v for k, v in references.items()}, **rows}
    cols = [
        "identity_similarity",
        "expression_error",
        "identity_leakage",
        "style_leakage",
        "style_following",
        "face_sharpness",
        "frechet_to_real",
        "no_face_rate",
    ]
    if any("emotion_agreement" in r for r in everything.values()):  # an emotion classifier was given
        cols[-1:-1] = ["emotion_agreement", "emotion_top1_agreement"]
    lines = [
        f"# {title}",
        "",
        f"Written by `{command}` (do not edit by hand).",
        "",
        "| row | " + " | ".join(cols) + " |",
        "| --- |" + " --- |" * len(cols),
    ]
    for name, r in everything.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r, c, not_measured) for c in cols) + " |")
    factors = next(
        (list(r["expression_error_per_factor"]) for r in everything.values() if r.get("expression_error_per_factor")),
        [],
    )
    if factors:
        lines += [
            "",
            "Expression error per factor (mean absolute error of the eval-side estimator):",
            "",
            "| row | " + " | ".join(factors) + " |",
            "| --- |" + " --- |" * len(factors),
        ]
        for name, r in everything.items():
            pf = r.get("expression_error_per_factor") or {}
            lines.append(f"| {name} | " + " | ".join(f"{pf[f]:.3f}" if f in pf else "" for f in factors) + " |")
    probes = extra.get("template_probe") or {}
    if probes:
        lines += [
            "",
            "Controlled probe: diffusion loss on the perfect target with the right template, the same "
            "template person re-rendered with another expression (same style and pose), and no expression:",
            "",
            "| row | right | wrong expression | none | wrong / right - 1 | none / right - 1 |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, pr in probes.items():
            lines.append(
                f"| {name} | {pr['loss_right_template']:.4f} | {pr['loss_wrong_expression_template']:.4f} | "
                f"{pr['loss_no_expression']:.4f} | {pr['wrong_vs_right']:+.4f} +- {pr['wrong_vs_right_se']:.4f} "
                f"| {pr['none_vs_right']:+.4f} +- {pr['none_vs_right_se']:.4f} |"
            )
    lines.append("")
    for k, v in extra.items():
        if k not in ("reference_lines", "template_probe"):
            lines.append(f"- {k}: {v}")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    return out_dir / "results.md"


PLOT_METRICS = ("identity_similarity", "expression_error", "identity_leakage", "face_sharpness")


def plot_rows(rows: dict[str, dict], path: str | Path, metrics: Sequence[str] = PLOT_METRICS, title: str = "") -> Path:
    """One panel per metric, one bar per row with its standard error (``<metric>_se``, over templates) as the error
    bar; rows without a value show "n/a". Written as a PNG with matplotlib (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 1.2 + 0.45 * len(names) * len(metrics)), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        values = np.array([rows[n].get(metric, np.nan) for n in names], dtype=float)
        errors = np.array([rows[n].get(f"{metric}_se", np.nan) for n in names], dtype=float)
        y = np.arange(len(names))
        ax.barh(y, np.nan_to_num(values), xerr=np.where(np.isfinite(errors), errors, 0), color="#4c78a8", capsize=3)
        for k, v in enumerate(values):
            ax.text(
                0 if not np.isfinite(v) else v,
                k,
                "  n/a" if not np.isfinite(v) else f"  {v:.3f}",
                va="center",
                fontsize=8,
            )
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metric.replace("_", " "), fontsize=9, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _template_inputs(pipe, templates: Sequence[np.ndarray]) -> dict:
    """The adapter's expression inputs for templates: image-encoder tokens and/or expression codes."""
    adapter = pipe.emoji_adapter
    out = {}
    if adapter.uses_image_stream:
        out["expression_image_embeds"] = pipe.encode_expression(list(templates), len(templates))
    if adapter.uses_code_stream:
        out["expression_codes"] = pipe.encode_expression_codes(list(templates), len(templates))
    return out


def template_use_probe(
    pipe,
    cases: Sequence[Case],
    targets: Sequence[np.ndarray],
    wrong_templates: Sequence[np.ndarray],
    timesteps: Sequence[int] = (250, 500, 750),
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """The controlled probe: does the adapter use the template's *expression*?

    For each case, the diffusion loss of predicting `targets[i]` (the reference person showing the template's exact
    expression) at fixed noise and `timesteps`, conditioned on (a) the right template, (b) `wrong_templates[i]`, the
    same template person re-rendered in the same style and pose with another expression, and (c) no expression
    (branch scale 0). (b) and the template differ only in expression, so ``wrong / right - 1 > 0`` measures
    expression use, not appearance copying. Returns the mean losses, the relative gaps and their standard errors
    over templates. `pipe` needs its adapter, face analyzer (and expression encoder for a code stream).
    """
    import torch
    import torch.nn.functional as F

    from .adapted_unet import adapted_unet_forward
    from .train.diffusion import diffusion_target, training_noise_scheduler

    scheduler = training_noise_scheduler(pipe.scheduler)
    device, unet, vae = pipe._execution_device, pipe.unet, pipe.vae
    size = targets[0].shape[0]
    text_dim = pipe.text_encoder_2.config.projection_dim
    time_ids = pipe._get_add_time_ids(
        (size, size), (0, 0), (size, size), dtype=unet.dtype, text_encoder_projection_dim=text_dim
    ).to(device)
    per_case = {"right": [], "wrong": [], "none": []}
    g = torch.Generator().manual_seed(seed * 7 + 5)
    for start in range(0, len(cases), batch_size):
        chunk = list(range(start, min(start + batch_size, len(cases))))
        b = len(chunk)
        pixels = torch.as_tensor(np.stack([targets[i] for i in chunk]), dtype=torch.float32) / 127.5 - 1.0
        latents = vae.encode(pixels.permute(0, 3, 1, 2).to(device, vae.dtype)).latent_dist.mean
        latents = (latents * vae.config.scaling_factor).float().cpu()
        prompt_embeds, _, pooled, _ = pipe.encode_prompt(
            [cases[i].prompt for i in chunk], device=device, do_classifier_free_guidance=False
        )
        identity = pipe.encode_identity([[cases[i].reference] for i in chunk], b)
        inputs = {
            "right": _template_inputs(pipe, [cases[i].template for i in chunk]),
            "wrong": _template_inputs(pipe, [wrong_templates[i] for i in chunk]),
        }
        inputs["none"] = inputs["right"]
        losses = {k: torch.zeros(b) for k in per_case}
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=g)
            tt = torch.full((b,), int(t), dtype=torch.long)
            noisy = scheduler.add_noise(latents, noise, tt)
            target = diffusion_target(scheduler, latents, noise, tt)
            for key, exp in inputs.items():
                cond = pipe.prepare_conditioning(
                    batch_size=b,
                    num_images_per_prompt=1,
                    do_classifier_free_guidance=False,
                    identity_embeds=identity,
                    expression_image_embeds=exp.get("expression_image_embeds"),
                    identity_scale=1.0,
                    expression_scale=0.0 if key == "none" else 1.0,
                    expression_mask=None,
                    device=device,
                    expression_codes=exp.get("expression_codes"),
                )
                pred = adapted_unet_forward(
                    unet, noisy.to(device, unet.dtype), tt.to(device), prompt_embeds, pooled, time_ids, cond
                )
                losses[key] += F.mse_loss(pred.float().cpu(), target, reduction="none").mean(dim=(1, 2, 3))
        for key in per_case:
            per_case[key].extend((losses[key] / len(timesteps)).tolist())
    right, wrong, none = (np.array(per_case[k]) for k in ("right", "wrong", "none"))
    groups = [c.template_person for c in cases]
    return {
        "loss_right_template": float(right.mean()),
        "loss_wrong_expression_template": float(wrong.mean()),
        "loss_no_expression": float(none.mean()),
        "wrong_vs_right": float(wrong.mean() / right.mean() - 1.0),
        "wrong_vs_right_se": standard_error_over(list(wrong / right - 1.0), groups),
        "none_vs_right": float(none.mean() / right.mean() - 1.0),
        "none_vs_right_se": standard_error_over(list(none / right - 1.0), groups),
        "timesteps": list(map(int, timesteps)),
    }


def ridge_probe(
    features: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    lambdas: Sequence[float] = (0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0),
    clip: tuple[float, float] | None = (0.0, 1.0),
    seed: int = 0,
) -> dict:
    """How much of `targets` (N, K) a linear map reads from `features` (N, F), on held-out groups (identities).

    Splits the groups 80/20 into train and test, tunes the ridge strength on an inner 80/20 group split of the train
    part, standardises with train statistics only, clips predictions to `clip` (the targets' range), and reports the
    test MAE and R^2 next to the mean predictor's MAE (the trivial answer).
    """
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)

    def split(mask: np.ndarray) -> np.ndarray:
        names = np.unique(groups[mask])
        held = rng.permutation(names)[: max(1, len(names) // 5)]
        return mask & np.isin(groups, held)

    def fit_predict(train: np.ndarray, test: np.ndarray, lam: float) -> np.ndarray:
        mu, sd = features[train].mean(0), features[train].std(0) + 1e-6
        a, b = (features[train] - mu) / sd, (features[test] - mu) / sd
        y_mean = targets[train].mean(0)
        if a.shape[0] < a.shape[1]:  # dual form: (A A^T + lam I)^-1 y
            w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(a.shape[0]), targets[train] - y_mean)
        else:
            w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (targets[train] - y_mean))
        pred = b @ w + y_mean
        return np.clip(pred, *clip) if clip is not None else pred

    everything = np.ones(len(groups), dtype=bool)
    test = split(everything)
    train = ~test
    inner_val = split(train)
    inner_train = train & ~inner_val
    val_mae = {
        lam: float(np.abs(fit_predict(inner_train, inner_val, lam) - targets[inner_val]).mean()) for lam in lambdas
    }
    best = min(val_mae, key=val_mae.get)
    pred = fit_predict(train, test, best)
    residual = ((pred - targets[test]) ** 2).sum()
    total = ((targets[test] - targets[train].mean(0)) ** 2).sum()
    return {
        "probe_mae": float(np.abs(pred - targets[test]).mean()),
        "mean_predictor_mae": float(np.abs(targets[test] - targets[train].mean(0)).mean()),
        "r2": float(1.0 - residual / total),
        "ridge_lambda": float(best),
        "validation_mae_by_lambda": val_mae,
        "train_rows": int(train.sum()),
        "test_rows": int(test.sum()),
        "features": int(features.shape[1]),
    }
