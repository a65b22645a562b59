"""CLIP BPE counting and CLIP-77 truncation (critifusion_tui.engine.tokens)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from importlib import resources

import pytest

from critifusion_tui.engine import tokens
from critifusion_tui.engine.tokens import clip77_cut, clip77_strict, count_tokens, encode

# Facts about the real CLIP vocabulary (openai/clip-vit-large-patch14), independent of our code.
A, PHOTO, OF, CAT = 320, 1125, 539, 2368
BOS, EOS = 49406, 49407


def test_known_ids_and_counts() -> None:
    assert encode("a photo of a cat") == [BOS, A, PHOTO, OF, A, CAT, EOS]
    assert count_tokens("a photo of a cat") == 7
    assert count_tokens("") == 2
    assert count_tokens("   \n\t ") == 2
    # Case and spacing do not change the ids.
    assert encode("  A   PHOTO\nof a\tCat ") == [BOS, A, PHOTO, OF, A, CAT, EOS]


def test_digits_are_one_token_each() -> None:
    # CLIP's split pattern takes numbers one digit at a time.
    assert count_tokens("12345") == 2 + 5
    assert count_tokens("8k") == 2 + 2
    assert count_tokens("a " * 200) == 202


def test_vocabulary_shape() -> None:
    vocab = tokens.vocabulary()
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert vocab["a</w>"] == A and vocab["cat</w>"] == CAT and vocab["photo</w>"] == PHOTO
    assert vocab["!"] == 0  # byte symbols come first, printable ASCII in order


def test_special_tokens_only_in_exact_spelling() -> None:
    assert encode("<|endoftext|>") == [BOS, EOS, EOS]
    assert encode("x<|startoftext|>") == [BOS, tokens.vocabulary()["x</w>"], BOS, EOS]
    # Upper case is ordinary text (transformers matches added tokens before lower-casing).
    assert EOS not in encode("<|ENDOFTEXT|>")[1:-1]


def test_import_is_cheap() -> None:
    code = (
        "import sys, critifusion_tui.engine.tokens as t, critifusion_tui.engine.prompts;"
        "print(sorted(m for m in ('regex', 'torch', 'transformers', 'gzip') if m in sys.modules));"
        "print(t._tables.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "0"]


# ---------------------------------------------------------------------------------------------
# CLIP-77 truncation
# ---------------------------------------------------------------------------------------------


def test_exactly_77_tokens_is_kept_whole() -> None:
    text = " ".join(["a"] * 75)
    assert count_tokens(text) == 77
    assert clip77_strict(text) == text
    assert clip77_strict("  " + text + " \n") == text
    assert clip77_cut(text) is None


def test_78_tokens_is_cut_to_77() -> None:
    text = " ".join(["a"] * 76)
    assert count_tokens(text) == 78
    assert clip77_strict(text) == " ".join(["a"] * 75)
    assert clip77_cut(text) == len(" ".join(["a"] * 75))


def test_multi_token_word_that_fits_exactly() -> None:
    text = " ".join(["a"] * 70) + " 12345"  # 2 + 70 + 5 = 77
    assert clip77_strict(text) == text
    assert clip77_strict(text + " a") == text


def test_multi_token_word_that_does_not_fit_is_dropped_whole() -> None:
    kept = " ".join(["a"] * 72)
    text = kept + " 12345 a"  # 2 + 72 + 5 would be 79
    out = clip77_strict(text)
    assert out == kept
    assert count_tokens(out) == 74


def test_single_enormous_word_gives_empty() -> None:
    text = "1" * 100
    assert clip77_strict(text) == ""
    assert clip77_cut(text) == 0
    assert clip77_strict("   " + text) == ""


def test_cut_keeps_original_spacing_and_offsets() -> None:
    text = "a\n\na  12 a"
    # max 5 leaves 3 ids: "a", "a" take 2 and "12" needs 2 more; a cut never splits a word.
    assert clip77_cut(text, max_tokens=5) == 4
    assert clip77_strict(text, max_tokens=5) == "a\n\na"
    assert clip77_strict(text, max_tokens=6) == "a\n\na  12"
    assert clip77_cut(text, max_tokens=7) is None


def test_max_tokens_below_two_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        clip77_cut("a", max_tokens=1)


@pytest.mark.parametrize(
    "text",
    [
        "a cat, " * 40,
        "hyperdetailed photorealistic cyberpunk metropolis, neon lights, " * 12,
        "supercalifragilisticexpialidocious " * 12,
        "日本語のテキスト 🐱🔥 " * 20,
        "don't stop, it's fine, we're here, they'll go " * 8,
    ],
)
def test_truncation_is_maximal(text: str) -> None:
    assert count_tokens(text) > 77
    out = clip77_strict(text)
    assert count_tokens(out) <= 77
    cut = clip77_cut(text)
    assert cut is not None and out == text[:cut].strip()
    words, kept = text.split(), out.split()
    assert words[: len(kept)] == kept
    # The next word would not have fitted.
    assert count_tokens(" ".join(words[: len(kept) + 1])) > 77


# ---------------------------------------------------------------------------------------------
# Cross-check against transformers' CLIPTokenizer built from the same merges file
# ---------------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    # Written independently of the module under test (GPT-2's table).
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    os.environ["HF_HUB_OFFLINE"] = "1"
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    raw = resources.files("critifusion_tui").joinpath("data", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(raw.read_bytes()).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + [line.replace(" ", "") for line in lines]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(lines) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")
    config = {
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
    assert len(tok) == 49408  # a silently built 2-token tokenizer would make the check moot
    assert tokens.vocabulary() == vocab
    return tok


CROSS_CHECK = [
    "a photo of a cat",
    "",
    "Hello, World!!",
    "don't it's we're I'LL they'd you've I'm",
    "3.14159 and 1234567, 1990s",
    "café naïve résumé, cafe\u0301 (decomposed)",
    "Ελληνικά ΟΔΟΣ Σ σ",
    "日本語のテキスト 漢字、かな",
    "emoji 🐱🔥 👩‍👩‍👧 ❤️",
    "a &amp; b &lt;tag&gt; &amp;amp; &quot;q&quot;",
    "multiple    spaces\n\nand\ttabs\r\n",
    "<|startoftext|>x<|endoftext|> <|ENDOFTEXT|> !<|endoftext|>",
    "a\x1cb !\x1c! \x85x\xa0y\u2003z\u200bw",
    "İstanbul straße ﬁne Ⅻ ½ ٣",
    "masterpiece, (best quality:1.2), [foo], {bar}, <lora:x:0.8>",
    "8k, UHD, sharp focus, high detailed, hyperdetailed",
    "a majestic lion on a rocky cliff at sunset, golden hour lighting, rule of thirds",
    "photorealistic, dslr look, cinematic composition, matte painting, neon lights",
    "aaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbb zzzzzzzz",
    "   leading and trailing   ",
    "'s's's 'hello' ''quoted''",
    "x" * 300,
    "e-mail: someone@example.com; url https://example.com/a?b=c#d",
    "C'est la vie — «quotes» “curly” ‘single’ … – —",
    "tabs\tand\vvertical\fform feed",
    "ǅemal ǲ K ſ ﬀ",
    "1st 2nd 3rd 4th, 100% 50/50 #1 $5 @home",
    "mixedCASE CamelCaseWords HTTPServer",
    "русский текст, Ünïcödé, ÆØÅ æøå",
    "…!!!??? ---- ____ ****",
]


@pytest.mark.parametrize("text", CROSS_CHECK)
def test_ids_match_transformers(hf_tokenizer, text: str) -> None:
    assert encode(text) == hf_tokenizer(text)["input_ids"]
    assert count_tokens(text) == len(hf_tokenizer(text)["input_ids"])
