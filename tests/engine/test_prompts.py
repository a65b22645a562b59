"""Tag rules of SPEC.md sections 1 and 5 (critifusion_tui.engine.prompts).

Expected strings are written by hand from the SPEC, not produced by the code under test.
"""

from __future__ import annotations

import pytest

from critifusion_tui.engine.prompts import (
    DEFAULT_NEGATIVE,
    PRESETS,
    QUALITY_FLOOR,
    Preset,
    cleanup_commas,
    dedup_keep_order,
    fallback_tags,
    get_preset,
    merge_critique_with_tags,
    negative_tags,
    order_tags,
    postprocess_tags,
    seed_tags,
    split_tags,
    style_hints,
)
from critifusion_tui.engine.tokens import count_tokens

HQ_POSITIVES = (
    "balanced composition, natural color palette, vibrant colors, balanced contrast, "
    "high detail, highly detailed, hyperdetailed, sharp focus, UHD, 8k"
)
HQ_NEGATIVES = (
    "low quality, blurry, watermark, jpeg artifacts, overexposed, underexposed, color banding, "
    "extra fingers, missing limbs, disfigured, mutated hands"
)


# ---------------------------------------------------------------------------------------------
# Presets and constants
# ---------------------------------------------------------------------------------------------


def test_hq_preference_preset() -> None:
    preset = PRESETS["hq_preference"]
    assert ", ".join(preset.positives) == HQ_POSITIVES
    assert ", ".join(preset.negatives) == HQ_NEGATIVES
    assert get_preset("hq_preference") is preset
    assert get_preset(preset) is preset


def test_constants() -> None:
    assert QUALITY_FLOOR == ("high detailed", "sharp focus", "8k", "UHD")
    assert DEFAULT_NEGATIVE == (
        "blurry, low quality, artifacts, watermark, extra fingers, missing limbs, "
        "over-sharpened, harsh lighting, oversaturated"
    )


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_preset("hq_preferense")
    assert str(info.value) == "unknown tag preset 'hq_preferense'; known presets: hq_preference"
    with pytest.raises(ValueError):
        get_preset("nope")
    with pytest.raises(KeyError):
        postprocess_tags("a, b", "a cat", preset="nope")


def test_negative_tags() -> None:
    assert negative_tags() == HQ_NEGATIVES
    assert negative_tags("hq_preference") == HQ_NEGATIVES
    assert negative_tags(Preset("mine", ("x",), ("bad hands", "blur"))) == "bad hands, blur"


def test_seed_tags() -> None:
    assert seed_tags("a cat") == HQ_POSITIVES.split(", ")
    assert seed_tags("cyberpunk street") == [*HQ_POSITIVES.split(", "), "neon lights", "cyberpunk"]
    assert seed_tags("x", Preset("p", ("a", "b"), ())) == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# split_tags
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a cat, sunset\nsharp focus", ["a cat", "sunset", "sharp focus"]),
        ("", []),
        ("   \n , ,, \n\t", []),
        ("a cat,,  , sunset ,\r\n,8k", ["a cat", "sunset", "8k"]),
        ("1. a cat\n2) sunset glow\n(3) 8k\n10. UHD", ["a cat", "sunset glow", "8k", "UHD"]),
        (
            "- a cat\n* rim light\n• soft glow\n+ 8k\n– UHD",
            ["a cat", "rim light", "soft glow", "8k", "UHD"],
        ),
        ("8k, 3.5mm lens, 1990s style, -5 stops", ["8k", "3.5mm lens", "1990s style", "-5 stops"]),
        ('"a cat, rim light, 8k"', ["a cat", "rim light", "8k"]),
        (
            "'a cat', 'sunset', “warm”, `8k`, **bold**",
            ["a cat", "sunset", "warm", "8k", "bold"],
        ),
        ("the painters', rock 'n' roll", ["the painters'", "rock 'n' roll"]),
        ("Tags: a cat, sunset", ["a cat", "sunset"]),
        ("Here are the merged tags:\n1. a cat\n2. sunset", ["a cat", "sunset"]),
        ("Sure! Here is the final list: a cat, 8k", ["a cat", "8k"]),
        ("**Final tag list:** a cat", ["a cat"]),
        ("Refined prompt: a red fox, snow", ["a red fox", "snow"]),
        ("a cat\nTags: sunset", ["a cat", "sunset"]),  # a label on any line
        ("Idea: a cat\nReply: sunset, 8k", ["a cat", "sunset", "8k"]),  # our own labels too
        ("猫、夕焼け、雪", ["猫", "夕焼け", "雪"]),  # the ideographic comma splits
        ("a **red** fox, __soft__ light, *warm* glow", ["a red fox", "soft light", "warm glow"]),
        (
            'shop sign, a sign reading "OPEN 24/7, NO REFUNDS", neon',
            ["shop sign", 'a sign reading "OPEN 24/7, NO REFUNDS"', "neon"],
        ),
        ('sign, "OPEN 24/7, NO REFUNDS", 8k', ["sign", '"OPEN 24/7, NO REFUNDS"', "8k"]),
        ("看板に「営業中、年中無休」、夜", ["看板に「営業中、年中無休」", "夜"]),
        ('a 12" record, vinyl', ['a 12" record', "vinyl"]),  # a stray quote holds nothing
        ("## Tags\na cat", ["a cat"]),
        ("style: anime, x", ["style: anime", "x"]),  # not a label
        ("salt &amp; pepper, &quot;x&quot;, a &amp;amp; b", ["salt & pepper", "x", "a & b"]),
        ("a cat., sunset.\nsharp focus...", ["a cat", "sunset", "sharp focus"]),
        ("a   big\tcat ,  soft  glow", ["a big cat", "soft glow"]),
        ("猫，夕焼け", ["猫", "夕焼け"]),
        ("```\na cat, 8k\n```", ["a cat", "8k"]),
        ("(best quality:1.2), [foo], {bar}", ["(best quality:1.2)", "[foo]", "{bar}"]),
    ],
)
def test_split_tags(text: str, expected: list[str]) -> None:
    assert split_tags(text) == expected


# ---------------------------------------------------------------------------------------------
# dedup, cleanup, ordering
# ---------------------------------------------------------------------------------------------


def test_dedup_keep_order() -> None:
    tags = ["A Cat", "a  cat", " a cat ", "a\tcat", "sunset", "", "   ", "SUNSET", "a cats"]
    assert dedup_keep_order(tags) == ["A Cat", "sunset", "a cats"]
    assert dedup_keep_order([]) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a ,b,, c , ,d ,", "a, b, c, d"),
        (", a", "a"),
        ("a,b", "a, b"),
        ("", ""),
        (" , ,, ", ""),
        ("  one tag  ", "one tag"),
    ],
)
def test_cleanup_commas(text: str, expected: str) -> None:
    assert cleanup_commas(text) == expected


def test_order_tags_one_tag_per_bucket() -> None:
    rest = [
        "other thing",
        "sharp focus",
        "pastel colors",
        "soft light",
        "centered",
        "watercolor style",
    ]
    assert order_tags("a cat", rest) == [
        "a cat",
        "watercolor style",
        "centered",
        "soft light",
        "pastel colors",
        "sharp focus",
        "other thing",
    ]


def test_order_tags_keyword_precedence() -> None:
    rest = [
        "dramatic clouds",
        "cinematic lighting",  # lighting ("cinematic" is a lighting keyword, not style)
        "neon glow",  # style: "neon" is a style keyword, style comes before lighting
        "warm light",  # lighting before color
        "cinematic composition",  # composition before lighting
        "balanced contrast",  # color
        "high detailed",  # detail
        "golden hour",  # lighting
        "intricate texture",  # detail
    ]
    assert order_tags(["a fox", "in snow"], rest) == [
        "a fox",
        "in snow",
        "neon glow",
        "cinematic composition",
        "cinematic lighting",
        "warm light",
        "golden hour",
        "balanced contrast",
        "high detailed",
        "intricate texture",
        "dramatic clouds",
    ]


def test_order_tags_no_subject_and_no_dedup() -> None:
    assert order_tags("", ["8k", "x", "8k"]) == ["8k", "8k", "x"]
    assert order_tags([], []) == []


# ---------------------------------------------------------------------------------------------
# Style hints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a photo of a cat", ["photorealistic", "dslr look"]),
        ("A PHOTOGRAPH of a cat", ["photorealistic", "dslr look"]),
        ("photoreal city", ["photorealistic", "dslr look"]),
        ("photo realistic city", ["photorealistic", "dslr look"]),
        ("portrait of an old man", ["photorealistic", "dslr look"]),
        ("a realistic dog", ["photorealistic", "dslr look"]),
        ("a photographer at work", []),  # \bphoto(graph|...)?\b does not match "photographer"
        ("photography studio", []),
        ("an oil painting of a barn", ["painterly", "brush strokes"]),
        ("a bird on canvas", ["painterly", "brush strokes"]),
        ("a toilet in the soil", []),  # "oil" only as a word
        ("movie poster of a hero", ["cinematic composition", "matte painting"]),
        ("a cinematic shot", ["cinematic composition", "matte painting"]),
        ("anime girl", ["clean line art", "illustration"]),
        ("kawaii cat", ["clean line art", "illustration"]),
        ("a watercolor fox", ["watercolor"]),
        ("watercolors of a bay", ["watercolor"]),
        ("cyberpunk street", ["neon lights", "cyberpunk"]),
        ("a neon-lit alley", ["neon lights", "cyberpunk"]),
        ("a watercolor fox in a neon city", ["watercolor", "neon lights"]),  # at most two
        ("portrait, oil painting, anime", ["photorealistic", "dslr look"]),  # first row wins
        ("a cat on a mat", []),
        ("", []),
    ],
)
def test_style_hints(prompt: str, expected: list[str]) -> None:
    assert style_hints(prompt) == expected


# ---------------------------------------------------------------------------------------------
# postprocess_tags (SPEC 1.4)
# ---------------------------------------------------------------------------------------------


def test_postprocess_inserts_prompt_and_orders_buckets() -> None:
    merged = "sunset glow, sharp focus, a red fox, watercolor style, 8k, vibrant colors"
    assert postprocess_tags(merged, "a fox in the snow") == (
        "a fox in the snow, watercolor style, sunset glow, vibrant colors, sharp focus, 8k, "
        "a red fox, high detailed, UHD"
    )


def test_postprocess_prompt_already_present() -> None:
    # Case-insensitive, trailing ",." ignored on both sides; the matching tag leads.
    assert postprocess_tags("golden hour, A Fox In The Snow., 8k", "a fox in the snow.") == (
        "A Fox In The Snow, golden hour, 8k, high detailed, sharp focus, UHD"
    )
    assert postprocess_tags("a fox  in the snow, rim light", "  a fox in the snow,") == (
        "a fox in the snow, rim light, high detailed, sharp focus, 8k, UHD"
    )


def test_postprocess_dedups_and_adds_only_missing_floor() -> None:
    merged = "Sharp Focus, sharp focus, SHARP  FOCUS, a cat, uhd"
    assert postprocess_tags(merged, "a cat") == "a cat, Sharp Focus, uhd, high detailed, 8k"


@pytest.mark.parametrize("merged", ["", "   \n\t ", ", ,\n,"])
def test_postprocess_empty_answer(merged: str) -> None:
    assert postprocess_tags(merged, "a cat") == "a cat, high detailed, sharp focus, 8k, UHD"


def test_postprocess_numbered_list_answer() -> None:
    merged = "Here are the tags:\n1. a cat\n2. rim lighting\n3. UHD."
    assert postprocess_tags(merged, "a cat") == ("a cat, rim lighting, UHD, high detailed, sharp focus, 8k")


def test_postprocess_html_escaped_answer() -> None:
    merged = "salt &amp; pepper cat, soft glow"
    assert postprocess_tags(merged, "salt & pepper cat") == (
        "salt & pepper cat, soft glow, high detailed, sharp focus, 8k, UHD"
    )


def test_postprocess_empty_prompt_uses_first_tag() -> None:
    assert postprocess_tags("a red fox, 8k, sunset", "") == ("a red fox, sunset, 8k, high detailed, sharp focus, UHD")
    assert postprocess_tags("", "") == "high detailed, sharp focus, 8k, UHD"


def test_postprocess_prompt_with_commas_is_not_repeated() -> None:
    merged = "a cat, oil painting style, sunset"
    assert postprocess_tags(merged, "a cat, oil painting") == (
        "a cat, oil painting, oil painting style, sunset, high detailed, sharp focus, 8k, UHD"
    )


def test_postprocess_truncates_to_77_tokens() -> None:
    # "a" 1 id, "cat," 2, every "NN," 3 (digits are one id each): 2 + 3 + 24 * 3 = 77.
    merged = ", ".join(str(n) for n in range(10, 60))
    out = postprocess_tags(merged, "a cat")
    assert out == "a cat, " + ", ".join(str(n) for n in range(10, 34))
    assert count_tokens(out) == 76  # the trailing comma of the cut is dropped


def test_postprocess_realistic_answer() -> None:
    merged = (
        "Sure! Here is the merged list:\n"
        "a lighthouse on a cliff, stormy sea, dramatic clouds, rim light, golden hour, "
        "rule of thirds, muted palette, intricate texture, photorealistic, 8k, UHD, "
        "sharp focus, high detailed."
    )
    assert postprocess_tags(merged, "a lighthouse on a cliff") == (
        "a lighthouse on a cliff, photorealistic, rule of thirds, rim light, golden hour, "
        "muted palette, intricate texture, 8k, UHD, sharp focus, high detailed, stormy sea, "
        "dramatic clouds"
    )


# ---------------------------------------------------------------------------------------------
# fallback_tags (SPEC 1.5)
# ---------------------------------------------------------------------------------------------


def test_fallback_prompt_seed_and_floor() -> None:
    assert fallback_tags("a cat") == f"a cat, {HQ_POSITIVES}, high detailed"
    assert fallback_tags("a portrait of an old man.", "hq_preference") == (
        f"a portrait of an old man, {HQ_POSITIVES}, photorealistic, dslr look, high detailed"
    )
    assert fallback_tags("") == f"{HQ_POSITIVES}, high detailed"


def test_fallback_with_small_preset_and_truncation() -> None:
    preset = Preset("p", ("soft glow",), ())
    assert fallback_tags("a cat", preset) == "a cat, soft glow, high detailed, sharp focus, 8k, UHD"
    long_prompt = " ".join(["a"] * 100)
    assert fallback_tags(long_prompt) == " ".join(["a"] * 75)


# ---------------------------------------------------------------------------------------------
# merge_critique_with_tags (SPEC 5)
# ---------------------------------------------------------------------------------------------


def test_merge_refined_subject_first_then_buckets() -> None:
    refined = "A red fox sitting in fresh snow, soft morning light, detailed fur."
    tags = "a fox in the snow, watercolor style, sunset glow, vibrant colors, sharp focus, 8k, high detailed, UHD"
    assert merge_critique_with_tags(refined, tags) == (
        "A red fox sitting in fresh snow, watercolor style, soft morning light, sunset glow, "
        "vibrant colors, detailed fur, sharp focus, 8k, high detailed, UHD, a fox in the snow"
    )


def test_merge_empty_refined_uses_first_stage1_tag() -> None:
    out = merge_critique_with_tags("", "a cat, sharp focus, soft glow")
    assert out == "a cat, soft glow, sharp focus"
    assert merge_critique_with_tags("  \n", "a cat") == "a cat"
    assert merge_critique_with_tags("", "") == ""


def test_merge_dedups_across_refined_and_tags() -> None:
    out = merge_critique_with_tags("a cat, Soft Glow", "A CAT, soft  glow, 8k")
    assert out == "a cat, Soft Glow, 8k"


def test_merge_truncates_to_77_tokens() -> None:
    tags = ", ".join(str(n) for n in range(10, 60))
    out = merge_critique_with_tags("a cat.", tags)
    assert out == "a cat, " + ", ".join(str(n) for n in range(10, 34))
    assert count_tokens(out) <= 77


# ---------------------------------------------------------------------------------------------
# positive_prompt / refinement_prompt: the CLIP-77 cut by importance
# ---------------------------------------------------------------------------------------------


def test_positive_prompt_keeps_the_floor_and_drops_the_models_last_tags() -> None:
    from critifusion_tui.engine.prompts import positive_prompt

    merged = ", ".join(str(n) for n in range(10, 60))
    spec = postprocess_tags(merged, "a cat")
    assert "high detailed" not in spec  # SPEC's cut falls on the floor, appended last
    out = positive_prompt(merged, "a cat")
    assert out == "a cat, " + ", ".join(str(n) for n in range(10, 30)) + ", high detailed, sharp focus, 8k, UHD"
    assert count_tokens(out) <= 77
    # Under the limit both agree.
    short = "a cat, sunset glow, 8k, soft fur"
    assert positive_prompt(short, "a cat") == postprocess_tags(short, "a cat")


def test_positive_prompt_keeps_a_floor_tag_the_model_put_last() -> None:
    from critifusion_tui.engine.prompts import positive_prompt

    merged = ", ".join(str(n) for n in range(10, 60)) + ", sharp focus"
    out = positive_prompt(merged, "a cat")
    assert "sharp focus" in out and count_tokens(out) <= 77


def test_refinement_prompt_keeps_the_prompt_and_the_floor() -> None:
    from critifusion_tui.engine.prompts import refinement_prompt

    tags = "a cat on a roof, " + ", ".join(f"glow {n}" for n in range(30)) + ", high detailed, 8k"
    refined = "a tabby cat sitting on a red tiled roof at night, " + ", ".join(f"star {n}" for n in range(10))
    out = refinement_prompt(refined, tags, "a cat on a roof")
    assert out.startswith("a tabby cat sitting on a red tiled roof at night, a cat on a roof, ")
    assert "high detailed" in out and "8k" in out and count_tokens(out) <= 77
    # A subject that already holds the prompt gets no second copy next to it (the stage-1 copy
    # stays where SPEC 5 puts it).
    assert refinement_prompt("a cat on a roof at dusk", "a cat on a roof, 8k", "a cat on a roof") == (
        "a cat on a roof at dusk, 8k, a cat on a roof"
    )
    # The protected prompt alone too long: SPEC's cut, as a last resort.
    long_prompt = " ".join(["cat"] * 100)
    assert count_tokens(refinement_prompt("", long_prompt, long_prompt)) <= 77
