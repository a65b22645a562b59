"""CritiCore (SPEC 1, 2, 4, 5) with the real Together and Ollama clients on the loopback server.

Every stage is driven through `ProviderRouter(settings)`, so what is asserted here is what
goes over the wire (temperatures, token limits, messages, images) and what comes back
(parsing, fallbacks, errors, events, timings).
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict

import ollama  # noqa: F401
import pytest
import together.resources  # noqa: F401  (the client imports this on its first call: 0.2 s)

from critifusion_tui.config import CriticoreConfig
from critifusion_tui.engine.criticore import (
    DIVIDER,
    Answer,
    ComponentsResult,
    CritiCore,
    CritiqueResult,
    TagsResult,
    extract_tag,
    issue_lines,
    parse_components,
)
from critifusion_tui.engine.events import CandidateDelta, CandidateFinished, CandidateStarted, Notice
from critifusion_tui.engine.prompts import (
    fallback_tags,
    merge_critique_with_tags,
    positive_prompt,
    postprocess_tags,
    refinement_prompt,
    seed_tags,
)
from critifusion_tui.engine.tokens import clip77_strict, count_tokens
from critifusion_tui.providers.router import ProviderRouter
from critifusion_tui.engine.offline import rules_components
from tests.loopback import PNG_1PX

TOGETHER_CHAT = "/v1/chat/completions"
OLLAMA_CHAT = "/api/chat"

# A mix of both backends in every role.
CANDIDATES = [
    "together:model-a",
    "together:model-b",
    "ollama:model-c",
    "together:model-d",
    "ollama:model-e",
]
AGGREGATOR = ["together:agg"]
VLMS = ["together:vlm-a", "ollama:vlm-b"]

PROMPT = "a red fox in snow"
NEGATIVE = (
    "low quality, blurry, watermark, jpeg artifacts, overexposed, underexposed, color banding, "
    "extra fingers, missing limbs, disfigured, mutated hands"
)
COMPONENTS_JSON = '{"components": ["a red fox", "snow on the ground", "a pine tree"]}'


# --- helpers ---------------------------------------------------------------------------------


def _split(ref: str) -> tuple[str, str]:
    provider, _, name = ref.partition(":")
    return (TOGETHER_CHAT if provider == "together" else OLLAMA_CHAT), name


def bodies(server, ref: str) -> list[dict]:
    """The request bodies the server received for one model reference."""
    path, name = _split(ref)
    return [r.body for r in server.requests_to(path) if r.body and r.body.get("model") == name]


def chat_requests(server) -> list:
    return server.requests_to(TOGETHER_CHAT) + server.requests_to(OLLAMA_CHAT)


def sampling(body: dict) -> tuple[float, int]:
    """(temperature, max tokens) in either backend's spelling."""
    if "options" in body:  # Ollama
        return body["options"]["temperature"], body["options"]["num_predict"]
    return body["temperature"], body["max_tokens"]


def turn(body: dict, role: str) -> dict:
    (found,) = [m for m in body["messages"] if m["role"] == role]
    return found


def text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, list):  # Together with an image: text and image_url parts
        return "".join(part["text"] for part in content if part["type"] == "text")
    return content


def user_text(body: dict) -> str:
    return text_of(turn(body, "user"))


def answer_of(result, model: str) -> Answer:
    answers = result.candidates if not isinstance(result, CritiqueResult) else [c.answer for c in result.critics]
    (found,) = [a for a in answers if a.model == model]
    return found


def name(ref: str) -> str:
    return ref.partition(":")[2]


def default_reply(ref: str) -> str:
    return f"reply from {name(ref)}"  # what the loopback server answers unscripted


@pytest.fixture
async def router(settings):
    router = ProviderRouter(settings)
    yield router
    await router.aclose()


@pytest.fixture
def events() -> list:
    return []


@pytest.fixture
def make_core(router, events):
    def make(candidates=CANDIDATES, aggregator=AGGREGATOR, vlms=VLMS, **kwargs) -> CritiCore:
        return CritiCore(
            router,
            candidates=list(candidates),
            aggregator=list(aggregator),
            vlms=list(vlms),
            emit=events.append,
            **kwargs,
        )

    return make


HANG_TIMEOUT_S = 1.0


def short_timeouts(settings) -> None:
    """Both clients give up after 1 s (for the hang faults). Every model shares the limit, so
    it leaves the answering ones room on a loaded machine (0.5 s once cut one off)."""
    settings.providers.together.timeout_s = HANG_TIMEOUT_S
    settings.providers.ollama.timeout_s = HANG_TIMEOUT_S


def notices(events, stage: str | None = None) -> list[Notice]:
    return [e for e in events if isinstance(e, Notice) and (stage is None or e.stage == stage)]


# --- stage 1: tags -------------------------------------------------------------------------


async def test_tags_requests_carry_the_method_numbers_prompt_and_seed_tags(server, make_core) -> None:
    prompt = "a cyberpunk fox on a neon street"
    for i, ref in enumerate(CANDIDATES):
        if ref == "together:model-d":
            server.script("model-d", status=500)  # one failure: nothing of it is merged
        else:
            server.script(name(ref), text=f"fox {i}, neon street, glow")
    server.script("agg", text="neon fox, wet street")
    core = make_core()

    result = await core.tags(prompt)

    seeds = seed_tags(prompt)
    assert "neon lights" in seeds and "cyberpunk" in seeds  # the prompt's style hints
    assert "balanced composition" in seeds  # the preset's positives
    for ref in CANDIDATES:
        (body,) = bodies(server, ref)
        assert sampling(body) == (0.7, 220)
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert turn(body, "system")["content"].strip()
        asked = user_text(body)
        assert prompt in asked
        for tag in seeds:
            assert tag in asked
    (agg,) = bodies(server, "together:agg")
    assert sampling(agg) == (0.2, 240)
    assert [m["role"] for m in agg["messages"]] == ["system", "user"]
    asked = user_text(agg)
    ok_texts = [f"fox {i}, neon street, glow" for i, ref in enumerate(CANDIDATES) if ref != "together:model-d"]
    assert DIVIDER.join(ok_texts) in asked  # every answer, in order, a divider line between
    assert asked.count(DIVIDER) == len(ok_texts) - 1
    assert "fox 3" not in asked and "model-d" not in asked
    assert prompt in asked
    assert result.source == "aggregator"
    # The Ollama candidates get the same numbers, in Ollama's own spelling.
    assert bodies(server, "ollama:model-c")[0]["options"] == {"temperature": 0.7, "num_predict": 220}


async def test_positive_is_the_postprocessed_aggregate_and_negative_the_preset(server, make_core) -> None:
    server.script(
        "agg",
        text="Tags: red fox, snow, 8k, golden hour light, Red  Fox, vibrant colors, oil painting style,"
        " centered composition, sharp focus",
    )
    result = await make_core().tags(PROMPT)

    # SPEC 1.4 by hand: label dropped, "Red  Fox" a repeat; the prompt is not among the tags,
    # so it leads; then style, composition, lighting, color, detail, other; then the missing
    # quality-floor tags in floor order.
    expected = (
        "a red fox in snow, oil painting style, centered composition, golden hour light,"
        " vibrant colors, 8k, sharp focus, red fox, snow, high detailed, UHD"
    )
    assert result.positive == expected
    assert result.positive == postprocess_tags(result.aggregated, PROMPT)
    assert result.negative == NEGATIVE
    assert result.source == "aggregator"
    # The merged text is the checked tag list; the raw answer stays on the aggregator's record.
    assert result.aggregated.startswith("red fox, snow, 8k")
    assert result.aggregator[-1].text.startswith("Tags: red fox")
    assert [a.model for a in result.candidates] == CANDIDATES
    assert all(a.ok and a.text == default_reply(a.model) for a in result.candidates)
    assert all(a.seconds > 0 for a in result.candidates)
    assert result.aggregated_by == "together:agg"


async def test_every_candidate_failing_falls_back_to_prompt_and_seed_tags(server, make_core, events) -> None:
    for ref in CANDIDATES:
        server.script(name(ref), status=500)
    result = await make_core().tags(PROMPT)

    # SPEC 1.5 by hand: the prompt, the seed tags (no style hint here), the missing floor tag.
    expected = (
        "a red fox in snow, balanced composition, natural color palette, vibrant colors,"
        " balanced contrast, high detail, highly detailed, hyperdetailed, sharp focus, UHD, 8k,"
        " high detailed"
    )
    assert result.positive == expected == fallback_tags(PROMPT)
    assert result.source == "fallback"
    assert result.aggregator == [] and result.aggregated_by is None
    assert bodies(server, "together:agg") == []  # nothing to merge: the aggregator is not asked
    assert all(a.error_code == "connection" for a in result.candidates)
    assert result.negative == NEGATIVE
    assert any("no candidate answered" in n.message for n in notices(events, "tags"))


async def test_aggregator_list_first_fails_second_wins(server, make_core, events) -> None:
    server.script("agg", status=500)
    server.script("agg-2", text="snowy fox, winter forest")
    result = await make_core(aggregator=["together:agg", "ollama:agg-2"]).tags(PROMPT)

    assert [a.model for a in result.aggregator] == ["together:agg", "ollama:agg-2"]
    first, second = result.aggregator
    assert first.error_code == "connection" and not first.ok
    assert second.ok and second.text == "snowy fox, winter forest"
    assert result.source == "aggregator"
    assert result.aggregated_by == "ollama:agg-2"
    assert result.record()["aggregated_by"] == "ollama:agg-2"
    assert result.positive.startswith("a red fox in snow, snowy fox, winter forest")
    # The second aggregator got the same merge request, in Ollama's spelling.
    (body,) = bodies(server, "ollama:agg-2")
    assert sampling(body) == (0.2, 240)
    assert any("agg failed" in n.message for n in notices(events, "tags"))


async def test_every_aggregator_failing_merges_the_candidates(server, make_core, events) -> None:
    server.script("agg", status=404)
    server.script("agg-2", status=500)
    server.script("model-a", text="fox, snow")
    server.script("model-b", text="tundra, fox")
    for ref in CANDIDATES[2:]:
        server.script(name(ref), status=401)
    result = await make_core(aggregator=["together:agg", "ollama:agg-2"]).tags(PROMPT)

    assert result.source == "candidates"
    assert result.aggregated_by is None
    assert result.aggregated == "fox, snow, tundra, fox"
    assert result.positive == postprocess_tags("fox, snow, tundra, fox", PROMPT)
    assert result.positive == "a red fox in snow, fox, snow, tundra, high detailed, sharp focus, 8k, UHD"
    assert [a.error_code for a in result.aggregator] == ["model_not_found", "connection"]
    assert result.record()["aggregated_by"] is None
    assert any("no aggregator answered" in n.message for n in notices(events, "tags"))


# --- stage 2: components -------------------------------------------------------------------


async def test_components_requests_and_parsing(server, make_core) -> None:
    for ref in CANDIDATES[:4]:
        server.script(name(ref), text=COMPONENTS_JSON)
    server.script("model-e", text="no JSON here")  # answered, but not in shape: not passed on
    server.script(
        "agg-o",
        text='Sure! Here is the JSON:\n```json\n{"components": ["a red fox", 42, "", "  snow  ", null,'
        ' "a moon", "a tree", "a river", "a hill", "a cloud"]}\n```\nHope it helps.',
    )
    result = await make_core(aggregator=["ollama:agg-o"]).components(PROMPT)

    for ref in CANDIDATES:
        (body,) = bodies(server, ref)
        assert sampling(body) == (0.4, 256)
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert PROMPT in user_text(body)
        assert "components" in turn(body, "system")["content"]
    (agg,) = bodies(server, "ollama:agg-o")
    assert agg["options"] == {"temperature": 0.2, "num_predict": 256}
    asked = user_text(agg)
    # Each usable answer as its checked JSON; the unusable one is not merged.
    assert asked.endswith(DIVIDER.join([COMPONENTS_JSON] * 4))
    assert "no JSON here" not in asked
    bad = answer_of(result, "ollama:model-e")
    assert bad.error_code == "unusable_answer" and bad.text == "no JSON here"
    assert 'no JSON object with a "components" list' in bad.error
    # Prose and fences around the JSON, non-strings and empties dropped, at most six.
    assert result.components == ["a red fox", "snow", "a moon", "a tree", "a river", "a hill"]
    assert result.source == "aggregator"
    assert result.aggregated_by == "ollama:agg-o"


def test_parse_components_rules() -> None:
    assert parse_components('{"components": ["a", "b"]}') == ["a", "b"]
    assert parse_components('Here you go: {"components": ["a", " b "]} - done') == ["a", "b"]
    fenced = 'Answer:\n```json\n{"components": ["fox", 3, {"x": 1}, "  ", "moon"]}\n```\nThanks'
    assert parse_components(fenced) == ["fox", "moon"]
    many = json.dumps({"components": [f"c{i}" for i in range(9)]})
    assert parse_components(many) == [f"c{i}" for i in range(6)]
    for bad in ("no json", '{"items": ["a"]}', '["a", "b"]', '{"components": "a"}'):
        with pytest.raises(ValueError):
            parse_components(bad)


async def test_unparseable_aggregator_answer_tries_the_next_then_the_candidates(server, make_core, events) -> None:
    server.script("model-a", text='{"components": ["a red fox", "snow"]}')
    server.script("model-b", text='```json\n{"components": ["Snow", "a moon"]}\n```')
    for ref in CANDIDATES[2:]:
        server.script(name(ref), status=500)
    server.script("agg", text="I cannot answer in JSON, sorry")
    server.script("agg-2", text='{"components": ["fox", "moon"]}', times=1)

    result = await make_core(aggregator=["together:agg", "together:agg-2"]).components(PROMPT)
    assert result.components == ["fox", "moon"]
    assert result.aggregated_by == "together:agg-2"
    assert result.aggregator[0].error_code == "unusable_answer"
    assert result.aggregator[0].text == "I cannot answer in JSON, sorry"  # the raw answer is kept
    # The unusable answer is reported as such when it finishes, not as a success.
    finished = [e for e in events if isinstance(e, CandidateFinished) and e.model == "together:agg"]
    assert finished and finished[-1].error

    # Every aggregator unusable: the candidates' components, in order, without repeats.
    server.script("agg-2", text="still no JSON")
    result = await make_core(aggregator=["together:agg", "together:agg-2"]).components(PROMPT)
    assert result.source == "candidates"
    assert result.components == ["a red fox", "snow", "a moon"]


async def test_every_candidate_failing_gives_the_prompts_clauses(server, make_core, events) -> None:
    prompt = "a red fox with a blue scarf, sitting in snow and a full moon"
    for ref in CANDIDATES:
        server.script(name(ref), status=503)
    result = await make_core().components(prompt)
    assert result.components == ["a red fox", "a blue scarf", "sitting in snow", "a full moon"]
    assert result.components == rules_components(prompt)
    assert result.source == "fallback"
    assert bodies(server, "together:agg") == []
    assert any("clauses" in n.message for n in notices(events, "components"))


# --- stages 1 and 2 together, and their timing ------------------------------------------------


async def test_five_candidates_run_in_parallel(server, make_core) -> None:
    for ref in CANDIDATES:
        server.script(name(ref), text="fox, snow", delay=0.5)
    server.script("agg", text="fox, snow", delay=0.5)
    core = make_core()

    started = time.perf_counter()
    result = await core.tags(PROMPT)
    elapsed = time.perf_counter() - started

    print(f"\ntags stage, 5 candidates + aggregator at 0.5 s each: {elapsed:.3f} s")
    # Parallel: all five candidate requests reach the server before the first answer could
    # have come (0.5 s); one after the other, they would arrive 0.5 s apart each. The wall
    # time is bounded below only: a loaded machine stretches it (benchmarks/ measures it).
    assert elapsed >= 0.95, elapsed  # one candidate round, then the aggregator
    arrivals = [r.at for r in chat_requests(server) if r.body["model"] != "agg"]
    assert len(arrivals) == 5 and max(arrivals) - min(arrivals) < 0.5, arrivals
    # Each candidate's seconds are its own call's, not the stage's (which adds the merge).
    assert all(0.45 <= a.seconds < result.seconds - 0.4 for a in result.candidates)
    assert result.seconds >= 0.95


async def test_tags_and_components_run_concurrently(server, make_core) -> None:
    # Each model answers JSON so that the components stage parses it; tags take it as text.
    for ref in [*CANDIDATES, "together:agg"]:
        server.script(name(ref), text=COMPONENTS_JSON, delay=1.0)
    core = make_core()

    started = time.perf_counter()
    tags, components = await core.tags_and_components(PROMPT)
    elapsed = time.perf_counter() - started

    print(f"\ntags_and_components at 1 s per request: {elapsed:.3f} s")
    assert isinstance(tags, TagsResult) and isinstance(components, ComponentsResult)
    assert tags.source == components.source == "aggregator"
    assert components.components == ["a red fox", "snow on the ground", "a pine tree"]
    requests = chat_requests(server)
    assert len(requests) == 12  # 2 x (5 candidates + 1 aggregator)
    # Overlapping, told by order rather than by the clock (a loaded CI machine stretches the
    # wall time; benchmarks/ measures it): one stage after the other would send the first
    # stage's aggregator request before the second stage's candidates; together, all ten
    # candidate requests arrive before either aggregator request.
    merges = [r.at for r in requests if r.body.get("model") == "agg"]
    candidates = [r.at for r in requests if r.body.get("model") != "agg"]
    assert len(merges) == 2 and len(candidates) == 10
    assert max(candidates) < min(merges)
    assert elapsed >= 1.9  # the aggregators waited for the candidates' 1 s answers


# --- stage 4: critique ---------------------------------------------------------------------

CRITIC_A = (
    "<issues>- the fox has five legs\n- snow looks grey</issues>\n"
    "<refined>a red fox in bright white snow, four legs</refined>\n<alignment>80</alignment>"
)
CRITIC_B = (
    "<issues>tail missing</issues><refined>a red fox with a bushy tail in snow</refined><alignment>90</alignment>"
)
CRITIC_AGG = (
    "<issues>- fox has five legs; tail missing</issues>"
    "<refined>a red fox with four legs and a bushy tail in white snow</refined>"
)
IMAGE_PROMPT = "a red fox in snow, golden hour light, high detailed"
COMPONENTS = ["a red fox", "snow on the ground"]


@pytest.mark.parametrize("ask_alignment", [False, True])
async def test_critique_requests_and_result(server, make_core, ask_alignment) -> None:
    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=CRITIC_AGG)

    result = await make_core().critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS, ask_alignment=ask_alignment)

    (together_body,) = bodies(server, "together:vlm-a")
    (ollama_body,) = bodies(server, "ollama:vlm-b")
    assert sampling(together_body) == (0.2, 420)
    assert sampling(ollama_body) == (0.2, 420)
    for body in (together_body, ollama_body):
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        asked = user_text(body)
        assert IMAGE_PROMPT in asked
        assert all(c in asked for c in COMPONENTS)
        assert "<issues>" in asked and "<refined>" in asked
        assert ("<alignment>" in asked) is ask_alignment
    # The image: a data URL part for Together, plain base64 in `images` for Ollama.
    parts = turn(together_body, "user")["content"]
    (image_part,) = [p for p in parts if p["type"] == "image_url"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG_1PX
    assert turn(ollama_body, "user")["images"] == [base64.b64encode(PNG_1PX).decode()]
    assert "images" not in turn(ollama_body, "system")

    (agg,) = bodies(server, "together:agg")
    assert sampling(agg) == (0.2, 420)
    asked = user_text(agg)
    for piece in (
        "the fox has five legs",
        "snow looks grey",
        "tail missing",
        "a red fox in bright white snow, four legs",
        "a red fox with a bushy tail in snow",
    ):
        assert piece in asked
    assert "image_url" not in json.dumps(agg)  # the merge is text only

    critic_a, critic_b = result.critics
    assert critic_a.issues == ["the fox has five legs", "snow looks grey"]
    assert critic_b.refined == "a red fox with a bushy tail in snow"
    assert result.issues == ["fox has five legs", "tail missing"]
    assert result.refined == "a red fox with four legs and a bushy tail in white snow"
    assert result.source == "aggregator" and result.aggregated_by == "together:agg"
    if ask_alignment:
        assert (critic_a.alignment, critic_b.alignment) == (80.0, 90.0)
        assert result.alignment == 85.0
        assert result.record()["alignment"] == 85.0
    else:  # not asked: not reported, even though the critics volunteered one
        assert result.alignment is None
        assert "alignment" not in result.record()


async def test_critic_parsing_escaped_tags_bullets_semicolons_and_clip77(server, make_core) -> None:
    long_refined = " ".join(["a red fox with a thick bushy tail standing in deep white snow"] * 8)
    server.script(
        "vlm-a",
        text="&lt;issues&gt;\n- the fox has five legs; the snow looks grey\n* the sky is empty\n"
        "1. tail missing\n2) ears too small\n• one too many\n&lt;/issues&gt;\n"
        f"&lt;refined&gt;{long_refined}&lt;/refined&gt;",
    )
    server.script("agg", status=500)  # no merge: the critic's own report stands

    result = await make_core(vlms=["together:vlm-a"]).critique(PNG_1PX, PROMPT, COMPONENTS)
    (critic,) = result.critics
    assert critic.issues == [
        "the fox has five legs",
        "the snow looks grey",
        "the sky is empty",
        "tail missing",
        "ears too small",
    ]
    assert count_tokens(long_refined) > 77
    assert critic.refined == clip77_strict(long_refined)
    assert count_tokens(critic.refined) <= 77 and long_refined.startswith(critic.refined)
    assert result.source == "critic"
    assert result.issues == critic.issues and result.refined == critic.refined
    assert result.aggregated_by is None


def test_tag_and_issue_helpers() -> None:
    assert extract_tag("&lt;refined&gt;a fox&lt;/refined&gt;", "refined") == "a fox"
    assert extract_tag("<REFINED >a fox</ refined>", "refined") == "a fox"
    assert extract_tag("no tags", "refined") is None
    assert issue_lines("- a; b\n\n* c\n1) d\n2. e\n- f") == ["a", "b", "c", "d", "e"]
    assert issue_lines("- 8k look is missing") == ["8k look is missing"]


async def test_critique_timing_is_one_round_plus_the_merge(server, make_core) -> None:
    server.script("vlm-a", text=CRITIC_A, delay=1.0)
    server.script("vlm-b", text=CRITIC_B, delay=1.0)
    server.script("agg", text=CRITIC_AGG, delay=1.0)
    core = make_core()
    started = time.perf_counter()
    result = await core.critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    elapsed = time.perf_counter() - started
    print(f"\ncritique, 2 VLMs + aggregator at 1 s per request: {elapsed:.3f} s")
    assert elapsed >= 1.9, elapsed  # one critic round, then the merge
    # The two critics at once: both requests reach the server within the first 1 s answer;
    # one after the other, the second would come at least 1 s after the first.
    critics = [r.at for r in chat_requests(server) if r.body["model"] != "agg"]
    assert len(critics) == 2 and abs(critics[1] - critics[0]) < 1.0, critics
    assert result.source == "aggregator"


async def test_no_vlm_answering_keeps_the_image_prompt(server, make_core, events) -> None:
    long_prompt = ", ".join(["a red fox standing in deep fresh snow under a pale winter sky"] * 6)
    server.script("vlm-a", status=404)
    server.script("vlm-b", status=500)

    result = await make_core().critique(PNG_1PX, long_prompt, COMPONENTS, ask_alignment=True)
    assert result.source == "none"
    assert result.issues == []
    assert result.refined == clip77_strict(long_prompt) != long_prompt
    assert result.alignment is None
    assert bodies(server, "together:agg") == []
    assert [c.answer.error_code for c in result.critics] == ["model_not_found", "connection"]
    assert any("no vision model answered" in n.message for n in notices(events, "critique"))
    # SPEC 4 + 5: the refinement prompt is then the prompt merged with the tags.
    tags = "a red fox in snow, golden hour light, high detailed"
    assert CritiCore.refinement_prompt(result, tags) == merge_critique_with_tags(result.refined, tags)


async def test_vlm_answer_without_the_tags_is_unusable(server, make_core, events) -> None:
    server.script("vlm-a", text="The image shows a fox. It looks fine to me.")
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=CRITIC_AGG)

    result = await make_core().critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    bad, good = result.critics
    assert bad.answer.error_code == "unusable_answer"
    assert bad.answer.text == "The image shows a fox. It looks fine to me."  # kept for the record
    assert bad.issues == [] and bad.refined == ""
    assert good.answer.ok
    # One usable critic left: its report stands, nothing to merge, no aggregator asked.
    assert result.source == "critic"
    assert result.refined == "a red fox with a bushy tail in snow" and result.issues == ["tail missing"]
    assert bodies(server, "together:agg") == []
    finished = [e for e in events if isinstance(e, CandidateFinished) and e.model == "together:vlm-a"]
    assert finished[-1].error  # shown as a failure when it finishes
    assert any("together:vlm-a" in n.message for n in notices(events, "critique"))

    # Alone, an unusable critic means nobody answered.
    result = await make_core(vlms=["together:vlm-a"]).critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert result.source == "none" and result.refined == IMAGE_PROMPT


async def test_aggregator_answer_without_refined_falls_back_to_the_first_critic(server, make_core) -> None:
    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text="Both critics agree the fox is fine.")
    result = await make_core().critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert result.source == "critic"
    assert result.aggregator[0].error_code == "unusable_answer"
    assert result.refined == "a red fox in bright white snow, four legs"
    assert result.issues == ["the fox has five legs", "snow looks grey"]


# --- faults: one model failing leaves its stage complete ---------------------------------------

FAULTS = [
    ("together:model-b", dict(status=401), "authentication"),
    ("together:model-b", dict(status=404), "model_not_found"),
    ("together:model-b", dict(status=429, retry_after=0), "rate_limited"),
    ("together:model-b", dict(status=500), "connection"),
    ("together:model-b", dict(hang=True), "timeout"),
    ("together:model-b", dict(garbage="<html>bad gateway</html>"), "unusable_answer"),
    ("together:model-b", dict(text="<think>only reasoning, never an answer"), "unusable_answer"),
    ("ollama:model-c", dict(status=401), "authentication"),
    ("ollama:model-c", dict(status=404), "model_not_found"),
    ("ollama:model-c", dict(status=429), "rate_limited"),
    ("ollama:model-c", dict(status=500), "connection"),
    ("ollama:model-c", dict(hang=True), "timeout"),
    ("ollama:model-c", dict(garbage="<html>bad gateway</html>"), "unusable_answer"),
    ("ollama:model-c", dict(text="<think>only reasoning</think>"), "unusable_answer"),
]


@pytest.mark.parametrize(
    ("ref", "script", "code"), FAULTS, ids=[f"{r.split(':')[0]}-{c}-{i}" for i, (r, _, c) in enumerate(FAULTS)]
)
async def test_one_failing_candidate_leaves_the_stage_complete(
    server, settings, make_core, events, ref, script, code
) -> None:
    if script.get("hang"):
        short_timeouts(settings)
    server.script(name(ref), **script)
    server.script("agg", text="fox, snow, moonlight")
    started = time.perf_counter()
    result = await make_core().tags(PROMPT)
    elapsed = time.perf_counter() - started

    failed = answer_of(result, ref)
    assert failed.error and failed.error_code == code
    assert failed.text == ""
    assert failed.model in failed.error  # the message names the model
    for other in CANDIDATES:
        if other != ref:
            assert answer_of(result, other).ok
            assert answer_of(result, other).text == default_reply(other)
    assert result.source == "aggregator"
    assert result.positive == "a red fox in snow, moonlight, fox, snow, high detailed, sharp focus, 8k, UHD"
    asked = user_text(bodies(server, "together:agg")[0])
    assert asked.count(DIVIDER) == 3  # four answers merged
    assert default_reply(ref) not in asked  # not even what streamed before the failure
    warnings = [n for n in notices(events, "tags") if n.level == "warning"]
    assert warnings and ref in warnings[0].message
    finished = [e for e in events if isinstance(e, CandidateFinished) and e.model == ref]
    assert len(finished) == 1 and finished[0].error == failed.error
    if script.get("hang"):
        # A hang costs the timeout once, no more: the stage waited for it, and the model
        # was asked once, not again after its timeout.
        assert elapsed >= HANG_TIMEOUT_S, elapsed
        assert len(bodies(server, ref)) == 1


async def test_one_failing_vlm_leaves_the_critique_complete(server, make_core, events) -> None:
    server.script("vlm-a", status=429)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=CRITIC_AGG)
    result = await make_core().critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert result.critics[0].answer.error_code == "rate_limited"
    assert result.critics[1].answer.ok
    assert result.source == "critic"  # one critic left: nothing to merge
    assert result.refined == "a red fox with a bushy tail in snow"
    assert bodies(server, "together:agg") == []


# --- offline: rules in every role --------------------------------------------------------------


async def test_rules_everywhere_is_a_full_offline_result(server, router, events) -> None:
    core = CritiCore(router, candidates=["rules"], aggregator=["rules"], vlms=["rules"], emit=events.append)
    prompt = "a red fox with a blue scarf, sitting in snow"

    tags, components = await core.tags_and_components(prompt)
    critique = await core.critique(PNG_1PX, tags.positive, components.components, ask_alignment=True)

    assert server.requests == []  # not one HTTP request
    assert not router.made("together") and not router.made("ollama")  # no client was even made
    assert tags.positive == postprocess_tags(fallback_tags(prompt), prompt)
    assert tags.positive.startswith(prompt + ", ")
    assert tags.negative == NEGATIVE
    assert components.components == ["a red fox", "a blue scarf", "sitting in snow"]
    assert critique.refined == clip77_strict(tags.positive)
    assert critique.issues == [] and critique.alignment is None
    # One candidate and one critic: nothing to merge, so the aggregator is not asked.
    assert (tags.source, components.source, critique.source) == ("candidates", "candidates", "critic")
    for result in (tags, components, critique):
        assert result.aggregator == [] and result.aggregated_by is None
    refinement = CritiCore.refinement_prompt(critique, tags)
    assert refinement == refinement_prompt(critique.refined, tags.positive, prompt)
    # The offline model's text also comes through the delta events.
    deltas = "".join(
        e.text for e in events if isinstance(e, CandidateDelta) and e.stage == "tags" and e.role == "candidate"
    )
    assert deltas == tags.candidates[0].text


# --- hygiene end to end --------------------------------------------------------------------


async def test_escapes_and_think_are_removed_markup_is_kept(server, make_core, events) -> None:
    server.script(
        "model-a",
        chunks=["<thi", "nk>let me think</th", "ink>\x1b[1mred", " fox\x1b[0m, [bold red]x[/], snow"],
    )
    server.script("model-c", chunks=["<think>hidden", "</think>\x1b]0;evil title\x07fox, ", "[bold red]x[/]"])
    server.script("agg", text="<think>merging</think>red fox, \x1b[31m[bold red]x[/]\x1b[0m, snow")

    result = await make_core().tags(PROMPT)

    assert answer_of(result, "together:model-a").text == "red fox, [bold red]x[/], snow"
    assert answer_of(result, "ollama:model-c").text == "fox, [bold red]x[/]"
    assert result.aggregated == "red fox, [bold red]x[/], snow"
    assert result.positive == "a red fox in snow, red fox, [bold red]x[/], snow, high detailed, sharp focus, 8k, UHD"
    asked = user_text(bodies(server, "together:agg")[0])
    assert "\x1b" not in asked and "think" not in asked
    for event in events:
        for value in vars(event).values():
            if isinstance(value, str):
                assert "\x1b" not in value and "<think>" not in value and "let me think" not in value


# --- events --------------------------------------------------------------------------------


async def test_events_per_model_in_order_and_deltas_add_up(server, make_core, events) -> None:
    for i, ref in enumerate(CANDIDATES):
        server.script(name(ref), chunks=[f"fox {i}", ", snow", ", moon"], chunk_delay=0.01)
    server.script("agg", chunks=["merged fox", ", snow"], times=1)
    server.script("agg", text=CRITIC_AGG)
    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", text=CRITIC_B)

    tags = await make_core().tags(PROMPT)
    critique = await make_core().critique(PNG_1PX, tags.positive, COMPONENTS)

    by_model: dict[tuple[str, str, str], list] = defaultdict(list)
    for event in events:
        if isinstance(event, (CandidateStarted, CandidateDelta, CandidateFinished)):
            by_model[(event.stage, event.role, event.model)].append(event)
    expected = {("tags", "candidate", ref) for ref in CANDIDATES}
    expected |= {("tags", "aggregator", "together:agg")}
    expected |= {("critique", "vlm", ref) for ref in VLMS} | {("critique", "aggregator", "together:agg")}
    assert set(by_model) == expected

    answers = {("tags", "candidate", a.model): a for a in tags.candidates}
    answers[("tags", "aggregator", "together:agg")] = tags.aggregator[0]
    answers |= {("critique", "vlm", c.answer.model): c.answer for c in critique.critics}
    answers[("critique", "aggregator", "together:agg")] = critique.aggregator[0]
    for key, seq in by_model.items():
        assert isinstance(seq[0], CandidateStarted), key
        assert isinstance(seq[-1], CandidateFinished), key
        deltas = seq[1:-1]
        assert deltas and all(isinstance(e, CandidateDelta) for e in deltas), key
        answer = answers[key]
        assert "".join(e.text for e in deltas) == answer.text == seq[-1].text
        assert seq[-1].error is None and seq[-1].seconds == answer.seconds
    # The candidates stream side by side: all start before any finishes.
    tag_events = [e for e in events if e.stage == "tags" and getattr(e, "role", "") == "candidate"]
    first_finish = next(i for i, e in enumerate(tag_events) if isinstance(e, CandidateFinished))
    assert sum(isinstance(e, CandidateStarted) for e in tag_events[:first_finish]) == 5
    # The aggregator starts after every candidate finished.
    order = [(type(e).__name__, getattr(e, "role", "")) for e in events if e.stage == "tags"]
    agg_start = order.index(("CandidateStarted", "aggregator"))
    assert sum(1 for o in order[:agg_start] if o == ("CandidateFinished", "candidate")) == 5


# --- re-runs -------------------------------------------------------------------------------


async def test_rerun_one_candidate_keeps_the_others_and_reaggregates(server, make_core) -> None:
    server.script("model-b", status=500, times=1)  # fails once, then answers
    server.script("agg", text="first merge", times=1)
    server.script("agg", text="second merge")
    core = make_core()

    first = await core.tags(PROMPT)
    assert answer_of(first, "together:model-b").error_code == "connection"
    assert "reply from model-b" not in user_text(bodies(server, "together:agg")[0])

    second = await core.tags(PROMPT, previous=first, only=["together:model-b"])

    assert len(bodies(server, "together:model-b")) == 2
    for ref in CANDIDATES:
        if ref != "together:model-b":
            assert len(bodies(server, ref)) == 1  # not asked again
            assert answer_of(second, ref) is answer_of(first, ref)
    assert answer_of(second, "together:model-b").ok
    assert [a.model for a in second.candidates] == CANDIDATES  # configured order kept
    assert len(bodies(server, "together:agg")) == 2  # merged again, now with model-b
    assert "reply from model-b" in user_text(bodies(server, "together:agg")[1])
    assert second.aggregated == "second merge"
    assert first.aggregated == "first merge"  # the earlier result is untouched

    # One reference alone, spelled loosely, is understood too.
    third = await core.tags(PROMPT, previous=second, only=" ollama: model-c ")
    assert len(bodies(server, "ollama:model-c")) == 2
    assert len(bodies(server, "together:model-b")) == 2
    assert answer_of(third, "together:model-b") is answer_of(second, "together:model-b")

    with pytest.raises(ValueError, match="together:nobody"):
        await core.tags(PROMPT, previous=second, only=["together:nobody"])


async def test_rerun_components_and_critique_for_one_model(server, make_core) -> None:
    for ref in CANDIDATES:
        server.script(name(ref), text=COMPONENTS_JSON)
    server.script("agg", text=COMPONENTS_JSON, times=1)
    core = make_core()
    first = await core.components(PROMPT)
    second = await core.components(PROMPT, previous=first, only=["ollama:model-e"])
    assert len(bodies(server, "ollama:model-e")) == 2
    assert len(bodies(server, "together:model-a")) == 1
    assert second.components == first.components

    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", status=500, times=1)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=CRITIC_AGG)
    crit1 = await core.critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert crit1.critics[1].answer.error_code == "connection"
    crit2 = await core.critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS, previous=crit1, only=["ollama:vlm-b"])
    assert len(bodies(server, "together:vlm-a")) == 1
    assert len(bodies(server, "ollama:vlm-b")) == 2
    assert crit2.critics[0].answer is crit1.critics[0].answer
    assert crit2.critics[1].refined == "a red fox with a bushy tail in snow"


async def test_rerun_with_an_edited_prompt(server, make_core) -> None:
    core = make_core()
    first = await core.tags(PROMPT)
    server.script("agg", text="blue fox, ice")
    edited = await core.tags("a blue fox on ice")
    for ref in CANDIDATES:
        latest = bodies(server, ref)[-1]
        assert "a blue fox on ice" in user_text(latest)
        assert PROMPT not in user_text(latest)
    assert edited.prompt == "a blue fox on ice"
    assert edited.positive == "a blue fox on ice, blue fox, ice, high detailed, sharp focus, 8k, UHD"
    assert first.positive.startswith(PROMPT)

    comps = await core.components("a blue fox on ice")
    assert "a blue fox on ice" in user_text(bodies(server, "together:model-a")[-1])
    assert comps.prompt == "a blue fox on ice"


async def test_positive_from_one_candidate(server, make_core) -> None:
    server.script("model-a", text="snowy fox, golden hour light, 8k")
    server.script("model-b", status=404)
    result = await make_core().tags(PROMPT)
    picked = result.positive_from("together:model-a")
    assert picked == postprocess_tags("snowy fox, golden hour light, 8k", PROMPT)
    assert picked == "a red fox in snow, golden hour light, 8k, snowy fox, high detailed, sharp focus, UHD"
    with pytest.raises(ValueError, match="together:model-b"):
        result.positive_from("together:model-b")
    with pytest.raises(ValueError, match="not a candidate"):
        result.positive_from("together:nobody")


async def test_refinement_prompt_merges_critique_and_tags(server, make_core) -> None:
    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=CRITIC_AGG, times=1)
    server.script("agg", text="fox, snow, golden hour light")
    core = make_core()
    critique = await core.critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    tags = await core.tags(PROMPT)
    merged = core.refinement_prompt(critique, tags)
    assert merged == refinement_prompt(critique.refined, tags.positive, PROMPT)
    assert merged == CritiCore.refinement_prompt(critique.refined, tags.positive, PROMPT)
    # The critic's subject first, the user's own prompt right after it, then the buckets.
    assert merged.startswith("a red fox with four legs and a bushy tail in white snow, a red fox in snow, ")
    # Without a prompt to keep, SPEC 5's order (the prompt bucketed with the other tags).
    assert CritiCore.refinement_prompt(critique.refined, tags.positive) == refinement_prompt(
        critique.refined, tags.positive
    )
    assert count_tokens(merged) <= 77


# --- records -------------------------------------------------------------------------------


async def test_records_carry_the_manifest_fields(server, make_core) -> None:
    server.script("model-b", status=500)
    for ref in CANDIDATES:  # tags first, then components
        server.script(name(ref), text=f"reply from {name(ref)}", times=1)
        server.script(name(ref), text=COMPONENTS_JSON, times=1)
    server.script("agg", text="fox, snow", times=1)
    server.script("agg", text=COMPONENTS_JSON, times=1)
    server.script("agg", text=CRITIC_AGG)
    server.script("vlm-a", text=CRITIC_A)
    server.script("vlm-b", text=CRITIC_B)
    core = make_core()
    tags = await core.tags(PROMPT)
    components = await core.components(PROMPT)
    critique = await core.critique(PNG_1PX, tags.positive, components.components, ask_alignment=True)

    record = tags.record()
    json.dumps(record)  # plain data
    assert [c["model"] for c in record["candidates"]] == CANDIDATES
    for c in record["candidates"]:
        assert {"model", "text", "error", "seconds"} <= set(c)
        assert isinstance(c["seconds"], float)
    failed = record["candidates"][1]
    assert failed["error"] and failed["text"] == ""
    assert record["candidates"][0]["error"] is None and record["candidates"][0]["text"] == "reply from model-a"
    assert record["aggregated"] == "fox, snow"
    assert record["positive"] == tags.positive and record["negative"] == NEGATIVE
    assert record["source"] == "aggregator" and record["aggregator"][0]["model"] == "together:agg"

    record = components.record()
    json.dumps(record)
    assert record["components"] == ["a red fox", "snow on the ground", "a pine tree"]
    assert len(record["candidates"]) == 5

    record = critique.record()
    json.dumps(record)
    for c in record["candidates"]:
        assert {"model", "issues", "refined", "error", "seconds"} <= set(c)
    assert [c["model"] for c in record["candidates"]] == VLMS
    assert record["candidates"][0]["issues"] == ["the fox has five legs", "snow looks grey"]
    assert record["issues"] == ["fox has five legs", "tail missing"]
    assert record["refined"] == "a red fox with four legs and a bushy tail in white snow"
    assert record["alignment"] == 85.0
    assert record["prompt"] == tags.positive and record["components"] == components.components


async def test_from_settings_reads_the_roles(server, settings, router) -> None:
    settings.criticore = CriticoreConfig(
        candidates=["together:model-a", "ollama:model-c"], aggregator="ollama:agg-o", vlms=["ollama:vlm-b"]
    )
    core = CritiCore.from_settings(router, settings)
    assert core.candidates == ["together:model-a", "ollama:model-c"]
    assert core.aggregators == ["ollama:agg-o"]
    assert core.vlms == ["ollama:vlm-b"]
    result = await core.tags(PROMPT)
    assert result.aggregated_by == "ollama:agg-o"


# --- answers that small local models really send (issue 12) --------------------------------

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "answers"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


async def test_echoing_candidates_are_refused_and_the_positive_stays_clean(server, make_core, events) -> None:
    server.script("model-a", text=fixture("tags_echo_system.txt"))
    server.script("model-b", text=fixture("tags_echo_user_labels.txt"))
    server.script("model-c", text=fixture("tags_echo_subject_rule.txt"))
    server.script("model-d", text=fixture("tags_labels_every_line.txt"))
    server.script("model-e", text=fixture("tags_prose_only.txt"))
    result = await make_core().tags("cat")

    codes = {a.model: a.error_code for a in result.candidates}
    assert codes == {
        "together:model-a": "unusable_answer",
        "together:model-b": "unusable_answer",
        "ollama:model-c": "unusable_answer",
        "together:model-d": None,
        "ollama:model-e": "unusable_answer",
    }
    echo = answer_of(result, "together:model-a")
    assert "repeats our instructions" in echo.error and echo.text  # reason shown, answer kept
    assert "prose" in answer_of(result, "ollama:model-e").error
    # One usable answer: nothing to merge, no aggregator asked.
    assert bodies(server, "together:agg") == [] and result.source == "candidates"
    assert result.positive == (
        "cat, watercolor, soft window light, a cat on a windowsill, tabby fur, shallow depth of field,"
        " high detailed, sharp focus, 8k, UHD"
    )
    for phrase in ("tag", "Seed", "Reply", "Idea", "subject phrase", "merge"):
        assert phrase not in result.positive
    # The pane gets the reason with the answer; the record says unusable.
    finished = [e for e in events if isinstance(e, CandidateFinished) and e.model == "together:model-a"]
    assert "repeats our instructions" in finished[-1].error and finished[-1].text
    assert result.record()["candidates"][0]["unusable"] is True
    kept = [e for e in events if isinstance(e, CandidateFinished) and e.model == "together:model-d"][-1]
    assert kept.notes == ("5 tags (asked for 16 to 26)",)
    assert result.record()["candidates"][3]["notes"] == ["5 tags (asked for 16 to 26)"]


async def test_an_echoing_aggregator_gives_way_to_the_candidates(server, make_core, events) -> None:
    server.script("model-a", text="red fox, snowy forest, golden hour")
    server.script("model-b", text=fixture("tags_cjk_ideographic_commas.txt"))
    for ref in CANDIDATES[2:]:
        server.script(name(ref), status=500)
    server.script("agg", text=fixture("tags_echo_system.txt"))
    result = await make_core().tags(PROMPT)

    assert result.aggregator[0].error_code == "unusable_answer"
    assert result.source == "candidates"
    assert result.positive == (
        "a red fox in snow, golden hour, red fox, snowy forest, 雪の中の赤いキツネ, 夕暮れの光, 松の森, 高精細,"
        " high detailed, sharp focus, 8k, UHD"
    )
    # The aggregator was sent the checked lists: the CJK answer already split into tags.
    assert "雪の中の赤いキツネ, 夕暮れの光" in user_text(bodies(server, "together:agg")[0])


async def test_placeholder_and_object_components(server, make_core) -> None:
    server.script("model-a", text=fixture("components_placeholder_only.txt"))
    server.script("model-b", text=fixture("components_schema_object.txt"))
    server.script("model-c", text=fixture("components_objects.txt"))
    server.script("model-d", text=fixture("components_python_then_json.txt"))
    server.script("model-e", status=500)
    server.script("agg", text=fixture("components_objects.txt"))
    result = await make_core().components(PROMPT)

    assert [a.error_code for a in result.candidates] == ["unusable_answer", "unusable_answer", None, None, "connection"]
    assert "placeholder" in result.candidates[0].error
    assert result.source == "aggregator"
    # Objects read from their name and description, not an empty list.
    assert result.components == ["a red fox sitting in snow", "moon: full and low above the trees", "pine trees"]
    asked = user_text(bodies(server, "together:agg")[0])
    assert '"..."' not in asked and "fake" not in asked and '"type"' not in asked


async def test_a_model_listed_twice_keeps_both_answers(server, make_core) -> None:
    server.script("model-a", text="red fox, snow", times=1)
    server.script("model-a", text="red fox, moonlight", times=1)
    server.script("model-a", text="red fox, pine forest", times=1)
    server.script("agg", text="red fox, snow, moonlight, pine forest")
    core = make_core(candidates=["together:model-a", "together:model-a", " together: model-a "])
    assert core.candidates == ["together:model-a", "together:model-a#2", "together:model-a#3"]
    result = await core.tags(PROMPT)

    assert len(bodies(server, "together:model-a")) == 3
    assert sorted(a.text for a in result.candidates) == ["red fox, moonlight", "red fox, pine forest", "red fox, snow"]
    asked = user_text(bodies(server, "together:agg")[0])
    assert asked.count(DIVIDER) == 2  # three lists merged
    # One of them alone can be re-asked, by its label.
    again = await core.tags(PROMPT, previous=result, only=["together:model-a#2"])
    assert len(bodies(server, "together:model-a")) == 4
    assert again.candidates[0] is result.candidates[0] and again.candidates[2] is result.candidates[2]


async def test_the_offline_critic_is_not_sent_to_a_real_aggregator(server, make_core, events) -> None:
    core = make_core(vlms=["rules"])
    result = await core.critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert bodies(server, "together:agg") == []
    assert result.source == "critic" and result.refined == IMAGE_PROMPT and result.issues == []
    assert any("nothing to merge" in n.message for n in notices(events, "critique"))

    # Beside a real critic, the one that changed nothing adds nothing: the real one stands.
    server.script("vlm-a", text=CRITIC_A)
    result = await make_core(vlms=["rules", "together:vlm-a"]).critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert bodies(server, "together:agg") == []
    assert result.refined == "a red fox in bright white snow, four legs"


async def test_an_echoed_critique_never_becomes_the_refinement(server, make_core) -> None:
    server.script("vlm-a", text=CRITIC_A, times=1)
    server.script("vlm-b", text=CRITIC_B)
    server.script("agg", text=fixture("critique_agg_echo.txt"))
    result = await make_core().critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert result.aggregator[0].error_code == "unusable_answer"
    assert "repeats our instructions" in result.aggregator[0].error
    assert result.source == "critic" and result.refined == "a red fox in bright white snow, four legs"
    refinement = CritiCore.refinement_prompt(result, IMAGE_PROMPT, PROMPT)
    assert "70 words" not in refinement and "bullet" not in refinement

    # A critic that only copies the example's placeholders is unusable too.
    server.script("vlm-a", text=fixture("critique_placeholder.txt"))
    result = await make_core(vlms=["together:vlm-a"]).critique(PNG_1PX, IMAGE_PROMPT, COMPONENTS)
    assert result.source == "none" and result.critics[0].answer.error_code == "unusable_answer"


def test_the_users_prompt_is_never_cut_from_the_refinement_prompt() -> None:
    prompt = "un vieux phare sur une falaise au-dessus d'une mer agitée"
    long_refined = (
        "a wide view of an old lighthouse on a rocky cliff above a stormy sea at dusk, dramatic clouds,"
        " gulls, crashing waves, sea spray, moody atmosphere, rain, lightning, wet rocks, tall grass"
    )
    # Lighting tags: bucketed before "other", where SPEC 5's rule puts the prompt, at the end.
    tags = positive_prompt(", ".join(f"glow {i}" for i in range(30)), prompt)
    merged = CritiCore.refinement_prompt(long_refined, tags, prompt)
    assert count_tokens(merged) <= 77
    assert prompt in merged
    assert merged.startswith("a wide view of an old lighthouse on a rocky cliff above a stormy sea at dusk, " + prompt)
    for floor in ("high detailed", "sharp focus", "8k", "UHD"):
        assert floor in merged
    # SPEC 5's literal rule (kept as merge_critique_with_tags) cuts the prompt off.
    assert prompt not in merge_critique_with_tags(long_refined, tags)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<alignment>85</alignment>", 85.0),
        ("<alignment>Score: 72.5/100</alignment>", 72.5),
        ("&lt;alignment&gt;90&lt;/alignment&gt;", 90.0),
        ("<alignment>-5</alignment>", 0.0),  # a negative rating is the bottom, not 5
        ("<alignment>250</alignment>", 100.0),
        ("<alignment>high</alignment>", None),
        ("<issues>x</issues><refined>y</refined>", None),
    ],
)
def test_alignment_rating_is_parsed_as_untrusted_output(text, expected):
    from critifusion_tui.engine.criticore import parse_alignment

    assert parse_alignment(text) == expected
