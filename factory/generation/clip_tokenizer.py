"""The CLIP tokenizer built offline from the BPE vocabulary open_clip ships (no hub, no vocab.json on disk).

open_clip's `bpe_simple_vocab_16e6.txt.gz` is OpenAI CLIP's vocabulary, the one every SD1.5/SDXL CLIP tokenizer
(`tokenizer/vocab.json` + `merges.txt` of a diffusers repository) was made from; the construction below mirrors
`open_clip.tokenizer.SimpleTokenizer`. Single-file checkpoints carry no tokenizer, so their pipelines get this one.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, [tuple(m.split()) for m in merges]  # type: ignore[misc]


def build_clip_tokenizer(pad_token: str | None = None, model_max_length: int = 77) -> Any:
    """A CLIPTokenizer over open_clip's vocabulary. `pad_token`: None keeps `<|endoftext|>`; SDXL's second
    tokenizer pads with "!"."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length, **extra)
