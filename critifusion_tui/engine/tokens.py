"""CLIP BPE token counting and CLIP-77 truncation, in pure Python.

SDXL's text encoders read at most 77 token ids (BOS and EOS included). The prompt rules need
the exact count the real tokenizer (openai/clip-vit-large-patch14, as diffusers runs it through
transformers) gives, and a UI counts on every keystroke, so this module:

- loads nothing at import time: the merges file and the ``regex`` package are loaded on the
  first call (about a tenth of a second), never a model, never the network;
- reproduces the tokenizer's steps: NFC, white-space runs to one space, lower case, the CLIP
  split pattern, GPT-2 byte-to-unicode mapping, BPE with ``</w>`` on the last symbol;
- caches per word, so a steady-state count of a 77-token prompt costs tens of microseconds.

The normalisation is the one transformers' ``CLIPTokenizer`` applies, which is what SDXL's
pipelines actually feed the encoders. OpenAI's original tokenizer also runs ftfy and
``html.unescape``; ftfy is not installed here, and we deliberately do not unescape HTML either:
SDXL never sees unescaped text, so unescaping would under-count "&amp;" (1 token instead of 3)
and let an unsafe prompt pass as CLIP-77 safe. Tag text is unescaped earlier, by
``prompts.split_tags``.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any, NamedTuple

__all__ = [
    "BOS_ID",
    "CLIP_MAX_TOKENS",
    "EOS_ID",
    "VOCAB_SIZE",
    "clip77_cut",
    "clip77_strict",
    "count_tokens",
    "encode",
    "vocabulary",
]

CLIP_MAX_TOKENS = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
BOS_ID = VOCAB_SIZE - 2  # 49406
EOS_ID = VOCAB_SIZE - 1  # 49407

_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# Lines 1..48894 of the merges file (line 0 is a version header): 256 byte symbols, the same
# 256 with "</w>", one token per merge, and the two special tokens make 49,408 ids.
_N_MERGES = 49152 - 256 - 2

# The CLIP split pattern. Written with \p{White_Space} rather than \s to say exactly what the
# regex engine inside `tokenizers` means by \s (the standard library's \s would also take the
# ASCII separators \x1c-\x1f, which the real tokenizer treats as symbols). No
# IGNORECASE: the text is lower-cased before the split, exactly as in transformers.
# CLIP's pattern starts with the two special-token strings as alternatives; they are left out
# because transformers re-splits every piece with GPT-2's byte-level pattern, which breaks
# "<|endoftext|>" into "<|", "endoftext", "|>" anyway. Real special tokens are matched in the
# raw text first (_SPECIAL_PATTERN), so lower-cased "<|ENDOFTEXT|>" stays ordinary text. The
# GPT-2 re-split changes nothing else: every other CLIP piece is a single GPT-2 piece.
_PIECE_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\p{White_Space}\p{L}\p{N}]+"
# Runs of text between white space. No CLIP piece crosses white space, so the count of a text
# is 2 plus the sum of its words' counts: this is what makes per-word caching exact.
_WORD_PATTERN = r"[^\p{White_Space}]+"
# Special tokens are matched in the raw text before normalisation, as transformers matches its
# added tokens (so "<|ENDOFTEXT|>" is ordinary text, "<|endoftext|>" is id 49407).
_SPECIAL_PATTERN = r"(<\|startoftext\|>|<\|endoftext\|>)"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others are shifted to 256 and above. The
    insertion order (printable ranges first) is the order of the first 256 vocabulary ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            code_points.append(256 + shift)
            shift += 1
    return {b: chr(c) for b, c in zip(byte_values, code_points)}


class _Tables(NamedTuple):
    byte_encoder: dict[int, str]
    vocab: dict[str, int]
    ranks: dict[tuple[str, str], int]
    piece_re: Any  # compiled `regex` patterns (the package is imported lazily)
    word_re: Any
    special_re: Any


@functools.cache
def _tables() -> _Tables:
    """Load the merges file and build the vocabulary, once, on first use."""
    # Imported here, not at module level: regex costs ~20 ms and importlib.resources ~7 ms,
    # and importing this module must stay cheap for the CLI and the app's first paint.
    import gzip
    from importlib import resources

    import regex

    data = resources.files("critifusion_tui").joinpath("data", _MERGES_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    byte_encoder = _bytes_to_unicode()
    symbols = list(byte_encoder.values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(merges) != _N_MERGES:
        raise RuntimeError(f"unexpected CLIP merges file: {len(vocab)} tokens, {len(merges)} merges")
    ranks = {(a, b): i for i, (a, b) in enumerate(merges)}
    return _Tables(
        byte_encoder=byte_encoder,
        vocab=vocab,
        ranks=ranks,
        piece_re=regex.compile(_PIECE_PATTERN),
        word_re=regex.compile(_WORD_PATTERN),
        special_re=regex.compile(_SPECIAL_PATTERN),
    )


def vocabulary() -> dict[str, int]:
    """The token-to-id table (49,408 entries). Do not mutate it."""
    return _tables().vocab


@functools.lru_cache(maxsize=1 << 16)
def _bpe_piece(piece: str) -> tuple[int, ...]:
    """Ids of one pre-tokenised piece: bytes mapped to symbols, then merged by rank."""
    t = _tables()
    word = [t.byte_encoder[b] for b in piece.encode("utf-8")]
    word[-1] += "</w>"
    ranks = t.ranks
    while len(word) > 1:
        # The lowest-ranked adjacent pair is merged everywhere it occurs, left to right.
        best = min(zip(word, word[1:]), key=lambda pair: ranks.get(pair, _N_MERGES))
        if best not in ranks:
            break
        first, second = best
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return tuple(t.vocab[sym] for sym in word)


def _normalise(text: str) -> str:
    """NFC, then lower case one character at a time.

    `tokenizers` lower-cases each character on its own; Python's str.lower() turns a final
    capital sigma into "ς" instead of "σ". Mapping "Σ" first makes the two agree (final sigma
    is the only context-dependent mapping str.lower() applies).
    """
    return unicodedata.normalize("NFC", text).replace("Σ", "σ").lower()


@functools.lru_cache(maxsize=1 << 16)
def _word_ids(word: str) -> tuple[int, ...]:
    """Ids (without BOS/EOS) of one run of non-white-space characters."""
    t = _tables()
    ids: list[int] = []
    # The special-token split is only needed when one can occur; it is rare in prompts.
    parts = t.special_re.split(word) if "<|" in word else [word]
    for part in parts:
        if part == BOS_TOKEN or part == EOS_TOKEN:
            ids.append(t.vocab[part])
            continue
        for piece in t.piece_re.findall(_normalise(part)):
            ids.extend(_bpe_piece(piece))
    return tuple(ids)


def encode(text: str) -> list[int]:
    """CLIP token ids of `text`, BOS and EOS included, without truncation or padding."""
    ids = [BOS_ID]
    for word in _tables().word_re.findall(text):
        ids.extend(_word_ids(word))
    ids.append(EOS_ID)
    return ids


def count_tokens(text: str) -> int:
    """Number of CLIP ids for `text`, BOS and EOS included ("" -> 2, "a photo of a cat" -> 7)."""
    return 2 + sum(len(_word_ids(w)) for w in _tables().word_re.findall(text))


def clip77_cut(text: str, max_tokens: int = CLIP_MAX_TOKENS) -> int | None:
    """Where a CLIP-`max_tokens` cut falls in `text`, or None when the whole text fits.

    Returns the character offset just after the last whole word that still fits, so
    ``text[:cut]`` is the kept part and ``text[cut:]`` what SDXL would never read; 0 when not
    even the first word fits. Words are runs of non-white-space, the same units
    `clip77_strict` keeps.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (BOS and EOS), got {max_tokens}")
    budget = max_tokens - 2
    used = 0
    cut = 0
    # Counts are additive over words, so one left-to-right pass finds the same longest prefix a
    # binary search over prefix lengths would, without re-counting any prefix.
    for match in _tables().word_re.finditer(text):
        used += len(_word_ids(match.group()))
        if used > budget:
            return cut
        cut = match.end()
    return None


def clip77_strict(text: str, max_tokens: int = CLIP_MAX_TOKENS) -> str:
    """`text` stripped if it fits in `max_tokens` CLIP ids, else its longest word prefix that does.

    The prefix keeps the text's own spacing (stripped at both ends). A first word too long on its
    own gives "".
    """
    cut = clip77_cut(text, max_tokens)
    return text.strip() if cut is None else text[:cut].strip()
