"""Evaluation and demo cases of the synthetic world: held-out references x held-out expression templates.

The renderer may be used here: this is evaluation (and the demo), never training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

STYLE_PROMPT_HEADS = ("rendering", "palette", "background", "pattern")


def held_out_cases(num_identities: int, num_templates: int, seed: int):
    """Cases over held-out identities: references neutral, templates of other held-out people, prompt styles that
    differ from the template's on every head. Also same-person render pairs (different expressions)."""
    from emojidiff_pipeline.evaluation import Case

    from .collection import make_caption
    from .renderer import STYLE_CHOICES, Expression, Identity, Pose, Style, render
    from .world import DEFAULT_NUM_IDENTITIES, is_held_out

    held_out = [i for i in range(DEFAULT_NUM_IDENTITIES) if is_held_out(i)]
    rng = np.random.default_rng([seed, 7])
    chosen = rng.permutation(held_out)[: num_identities + num_templates]
    ref_ids, tpl_ids = chosen[:num_identities], chosen[num_identities:]
    references, templates, pairs = {}, [], []
    for i in ref_ids:
        style = Style.random(rng)
        r = render(Identity.from_seed(int(i)), Expression(), style, Pose())
        references[int(i)] = r
        other = render(Identity.from_seed(int(i)), Expression.random(rng), style, Pose())
        pairs.append((r.image, other.image, r.keypoints, other.keypoints))
    for i in tpl_ids:
        style = Style.random(rng)
        expression = Expression.random(rng)  # drawn before the pose, as always
        templates.append((int(i), style, render(Identity.from_seed(int(i)), expression, style, Pose.random(rng))))
    cases = []
    for t_id, style, tpl in templates:
        tpl_style = {h: getattr(style, h) for h in STYLE_PROMPT_HEADS}
        for r_id, ref in references.items():
            t_rng = np.random.default_rng([seed, r_id, t_id, 3])
            # a prompt style that differs from the template's on every head
            prompt_style = Style(**{h: _other(STYLE_CHOICES[h], tpl_style[h], t_rng) for h in STYLE_PROMPT_HEADS})
            caption = make_caption(Identity.from_seed(r_id), Expression(), prompt_style, t_rng)
            cases.append(
                Case(
                    reference=ref.image,
                    template=tpl.image,
                    prompt=caption,
                    reference_person=f"id{r_id}",
                    template_person=f"id{t_id}",
                    prompt_style={h: getattr(prompt_style, h) for h in STYLE_PROMPT_HEADS},
                    template_style=tpl_style,
                    reference_kps=ref.keypoints,
                    template_kps=tpl.keypoints,
                )
            )
    return cases, pairs


def _other(choices, value, rng):
    options = [c for c in choices if c != value]
    return options[int(rng.integers(len(options)))]


def save_grid(images, cases, path: str | Path, n: int) -> Path:
    """Rows: references (first column), columns: templates (first row), cells: generated images."""
    refs = list(dict.fromkeys(c.reference_person for c in cases))[:n]
    tpls = list(dict.fromkeys(c.template_person for c in cases))[:n]
    size = images[0].shape[0]
    grid = np.full(((len(refs) + 1) * size, (len(tpls) + 1) * size, 3), 255, np.uint8)
    for img, c in zip(images, cases):
        if c.reference_person in refs and c.template_person in tpls:
            r, t = refs.index(c.reference_person) + 1, tpls.index(c.template_person) + 1
            grid[r * size : (r + 1) * size, t * size : (t + 1) * size] = img
            grid[r * size : (r + 1) * size, :size] = np.asarray(Image.fromarray(c.reference).resize((size, size)))
            grid[:size, t * size : (t + 1) * size] = np.asarray(Image.fromarray(c.template).resize((size, size)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def benchmark_templates(num_templates: int, rng: np.random.Generator):
    """`num_templates` expressions that cover every factor: in turn, one factor alone at a strong value (gaze to
    either extreme) for the first 4 x 11, then random realistic expressions (:meth:`Expression.random`)."""
    from .renderer import EXPRESSION_FIELDS, Expression

    out = []
    for k in range(num_templates):
        if k < 4 * len(EXPRESSION_FIELDS):
            field, level = EXPRESSION_FIELDS[k % len(EXPRESSION_FIELDS)], k // len(EXPRESSION_FIELDS)
            value = (0.0, 1.0, 0.1, 0.9)[level] if field.startswith("gaze") else (1.0, 0.7, 0.85, 0.55)[level]
            out.append(Expression(**{field: value}))
        else:
            out.append(Expression.random(rng))
    return out


def expression_benchmark(num_identities: int = 16, num_templates: int = 64, seed: int = 0):
    """The expression-transfer benchmark: held-out reference people x held-out templates covering every factor.

    Returns ``(cases, pairs, lines)``: cases as :func:`held_out_cases` (each template its own person, with the
    template's factors in ``case.template_factors``), same-person pairs for the identity ceiling, and the reference
    lines ``lines = {"neutral": [...], "perfect": [...], "probe_template": [...]}``, one uint8 image per case:
    the reference person in the prompt's style with a neutral face (what ignoring the template scores) and with the
    template's exact expression (what a perfect output scores), and the template person re-rendered in the
    template's style and pose with another expression (the controlled probe's wrong template).
    """
    from emojidiff_pipeline.evaluation import Case

    from .collection import make_caption
    from .renderer import STYLE_CHOICES, Expression, Identity, Pose, Style, render
    from .world import DEFAULT_NUM_IDENTITIES, is_held_out

    held_out = [i for i in range(DEFAULT_NUM_IDENTITIES) if is_held_out(i)]
    if num_identities + num_templates > len(held_out):
        raise ValueError(
            f"`num_identities` + `num_templates` must be <= {len(held_out)} held-out people, got "
            f"{num_identities} + {num_templates}."
        )
    rng = np.random.default_rng([seed, 9])
    chosen = rng.permutation(held_out)[: num_identities + num_templates]
    ref_ids, tpl_ids = chosen[:num_identities], chosen[num_identities:]
    expressions = benchmark_templates(num_templates, rng)
    references, pairs = {}, []
    for i in ref_ids:
        style = Style.random(rng)
        references[int(i)] = render(Identity.from_seed(int(i)), Expression(), style, Pose())
        other = render(Identity.from_seed(int(i)), Expression.random(rng), style, Pose())
        pairs.append((references[int(i)].image, other.image, references[int(i)].keypoints, other.keypoints))
    cases, lines = [], {"neutral": [], "perfect": [], "probe_template": []}
    for t_id, expression in zip(tpl_ids, expressions):
        style, pose = Style.random(rng), Pose.random(rng)
        tpl = render(Identity.from_seed(int(t_id)), expression, style, pose)
        other_expression = _far_expression(expression, rng)
        probe = render(Identity.from_seed(int(t_id)), other_expression, style, pose).image
        tpl_style = {h: getattr(style, h) for h in STYLE_PROMPT_HEADS}
        for r_id, ref in references.items():
            t_rng = np.random.default_rng([seed, r_id, int(t_id), 3])
            prompt_style = Style(**{h: _other(STYLE_CHOICES[h], tpl_style[h], t_rng) for h in STYLE_PROMPT_HEADS})
            caption = make_caption(Identity.from_seed(r_id), Expression(), prompt_style, t_rng)
            case = Case(
                reference=ref.image,
                template=tpl.image,
                prompt=caption,
                reference_person=f"id{r_id}",
                template_person=f"id{t_id}",
                prompt_style={h: getattr(prompt_style, h) for h in STYLE_PROMPT_HEADS},
                template_style=tpl_style,
                reference_kps=ref.keypoints,
                template_kps=tpl.keypoints,
                template_factors=expression.to_vector(),
            )
            cases.append(case)
            lines["neutral"].append(render(Identity.from_seed(r_id), Expression(), prompt_style, Pose()).image)
            lines["perfect"].append(render(Identity.from_seed(r_id), expression, prompt_style, Pose()).image)
            lines["probe_template"].append(probe)
    return cases, pairs, lines


def _far_expression(expression, rng: np.random.Generator, tries: int = 32):
    """A random expression far from `expression` (the largest factor distance of `tries` draws)."""
    from .renderer import Expression

    draws = [Expression.random(rng) for _ in range(tries)]
    return max(draws, key=lambda e: float(np.abs(e.to_vector() - expression.to_vector()).mean()))


def save_identity_sheet(images, cases, path: str | Path, columns: int = 16) -> Path:
    """One reference person across every template: the reference top-left, then pairs of rows (templates above,
    generated images below), `columns` per row. `images` and `cases` are that person's, in template order."""
    size = images[0].shape[0]
    n = len(images)
    rows = -(-n // columns)
    sheet = np.full(((2 * rows + 1) * size, columns * size, 3), 255, np.uint8)
    sheet[:size, :size] = np.asarray(Image.fromarray(cases[0].reference).resize((size, size)))
    for k, (img, c) in enumerate(zip(images, cases)):
        r, col = divmod(k, columns)
        y, x = (2 * r + 1) * size, col * size
        sheet[y : y + size, x : x + size] = np.asarray(Image.fromarray(c.template).resize((size, size)))
        sheet[y + size : y + 2 * size, x : x + size] = img
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
