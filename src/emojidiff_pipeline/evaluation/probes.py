"""Probes of what the expression branch uses: the controlled template-use probe (held-out loss with the right
template vs a re-render of the same template person with another expression) and the ridge probe of what the
expression tokens hold."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .scores import Case, standard_error_over


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

    from ..adapted_unet import adapted_unet_forward
    from ..train.diffusion import diffusion_target, training_noise_scheduler

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
