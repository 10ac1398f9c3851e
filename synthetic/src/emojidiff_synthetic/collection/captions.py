"""Web-like captions of collection photos: the style, coarse appearance and, sometimes, coarse expression words."""

from __future__ import annotations

import numpy as np

from ..renderer import (
    Expression,
    Identity,
    Style,
)

# Coarse words for the renderer's colour ramps (nearest stop of `HAIR_RAMP` / `SKIN_RAMP` in renderer/colors.py).
_HAIR_COLOR_WORDS = ("black", "dark brown", "brown", "red", "blond", "platinum blond", "gray", "blue", "pink")
_SKIN_WORDS = ("yellow", "pale", "light", "medium", "tan", "brown", "dark")
# `{c}` is the hair colour word, or nothing when the rendering hides colour.
_HAIR_PHRASES = {
    "bald": None,
    "buzz": "{c} buzz-cut hair",
    "short": "short {c} hair",
    "side_part": "side-parted {c} hair",
    "bob": "a {c} bob",
    "long": "long {c} hair",
    "spiky": "spiky {c} hair",
    "bun": "{c} hair in a bun",
    "curly": "curly {c} hair",
}
_SUBJECTS = ("a person", "a person", "a face", "someone")
_PORTRAIT_WORDS = ("portrait", "portrait", "avatar", "headshot")
_EXPRESSION_KEEP_PROB = 0.7  # web captions often leave out what a face does
_MAX_EXPRESSION_WORDS = 2


def _ramp_word(words: tuple[str, ...], t: float) -> str:
    return words[int(round(t * (len(words) - 1)))]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Every word `_expression_words` can give: `--strip_prompt_words` removes them from training captions.
EXPRESSION_WORDS = (
    "laughing",
    "smiling",
    "frowning",
    "open mouth",
    "pursed lips",
    "eyes closed",
    "winking",
    "raised eyebrows",
    "furrowed brows",
)


def _expression_words(expression: Expression) -> list[str]:
    """Coarse words for what is clearly visible; nothing for weak or ambiguous actions."""
    ex = expression
    words = []
    if ex.smile >= 0.6 and ex.jaw_open >= 0.5:
        words.append("laughing")
    elif ex.smile >= 0.5 and ex.frown < 0.3:
        words.append("smiling")
    elif ex.frown >= 0.5 and ex.smile < 0.3:
        words.append("frowning")
    if ex.jaw_open >= 0.6 and "laughing" not in words:
        words.append("open mouth")
    if ex.pucker >= 0.6:
        words.append("pursed lips")
    lo, hi = sorted((ex.eye_close_left, ex.eye_close_right))
    if lo >= 0.85:
        words.append("eyes closed")
    elif hi >= 0.85 and lo <= 0.15:
        words.append("winking")
    if min(ex.brow_raise_left, ex.brow_raise_right) >= 0.6:
        words.append("raised eyebrows")
    elif ex.brow_furrow >= 0.7:
        words.append("furrowed brows")
    return words


def make_caption(identity: Identity, expression: Expression, style: Style, rng: np.random.Generator) -> str:
    """A web-like caption: the style (always), coarse appearance and, sometimes, coarse expression words.

    No factor values leak: colours are named by their nearest ramp stop, expressions only by a small vocabulary
    ("smiling", "winking", ...) when clearly present, and each expression word is left out with probability
    1 - 0.7. E.g. "flat emoji portrait of a person with long brown hair and glasses, pastel palette, blue striped
    background, smiling".
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy Generator, got {type(rng).__name__}.")
    # Colour words only where the rendering shows colour (mono palette and pencil sketch are near gray).
    colorless = style.palette == "mono" or style.rendering == "sketch"
    subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
    portrait = _PORTRAIT_WORDS[int(rng.integers(len(_PORTRAIT_WORDS)))]
    mention_skin = rng.uniform() < 0.4
    mention_glasses = rng.uniform() < 0.9
    mention_freckles = rng.uniform() < 0.6

    traits = []
    template = _HAIR_PHRASES[identity.hair_style]
    if template is None:
        subject = "a bald person" if subject in ("a person", "someone") else subject
        if subject == "a face":
            traits.append("a bald head")
    else:
        color = "" if colorless else _ramp_word(_HAIR_COLOR_WORDS, identity.hair_color)
        traits.append(" ".join(template.format(c=color).split()))
    if mention_skin and not colorless:
        traits.append(f"{_ramp_word(_SKIN_WORDS, identity.skin_tone)} skin")
    if identity.freckles >= 0.5 and mention_freckles:
        traits.append("freckles")
    if identity.glasses and mention_glasses:
        traits.append("glasses")

    text = f"{style.rendering} emoji {portrait} of {subject}"
    if traits:
        text += f" with {_join(traits)}"
    text += f", {style.palette} palette, {style.background} {style.pattern} background"
    kept = [w for w in _expression_words(expression) if rng.uniform() < _EXPRESSION_KEEP_PROB]
    if kept:
        text += ", " + ", ".join(kept[:_MAX_EXPRESSION_WORDS])
    return text
