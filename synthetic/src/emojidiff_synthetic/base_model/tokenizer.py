"""An offline CLIP tokenizer for the base model: byte-level vocabulary plus BPE merges learned from the captions."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence

import torch
from transformers import (
    CLIPTokenizer,
)

logger = logging.getLogger(__name__)


BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
_WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokenization for lowercase ASCII text


def _byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode map: 256 printable characters, one per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _learn_merges(words: Counter, max_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding (Sennrich et al. 2016) on a word-frequency table, CLIP style (last symbol ends with
    ``</w>``): merge the most frequent adjacent pair until every word is one symbol or `max_merges` is reached."""
    seqs = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter = Counter()
        for w, syms in seqs.items():
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties broken alphabetically
        merges.append(best)
        joined = best[0] + best[1]
        for w, syms in seqs.items():
            i, out = 0, []
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            seqs[w] = out
    return merges


def build_tokenizer(captions: Sequence[str], model_max_length: int = 77, max_merges: int = 4000) -> CLIPTokenizer:
    """An offline CLIP tokenizer: byte-level vocab (tokenizes any string) plus BPE merges learned from the words of
    `captions`, so that caption words are single tokens. Saves with ``save_pretrained`` and reloads offline."""
    if isinstance(captions, str) or not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("`captions` must be a non-empty sequence of strings.")
    if not isinstance(model_max_length, int) or model_max_length < 4:
        raise ValueError(f"`model_max_length` must be an int >= 4, got {model_max_length!r}.")
    words: Counter = Counter()
    for c in captions:
        words.update(w for w in _WORD_RE.findall(" ".join(c.lower().split())) if w.isascii())
    chars = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    merges = _learn_merges(words, max_merges)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[BOS_TOKEN] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tokenize(tokenizer: CLIPTokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, model_max_length), padded and truncated as the SDXL pipeline does."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
