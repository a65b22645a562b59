"""`critifusion prompt IDEA`: CritiCore's text stages alone, for pipes and other tools.

Stages 1 and 2 (tags and components) run concurrently; with ``--critique IMAGE``, the VLMs
criticise that image file (stage 4) and the critique is merged with the tags into the
refinement prompt (stage 5). Standard output carries one line, the prompt to draw with (the
positive prompt; with ``--critique``, the refinement prompt), so ``critifusion prompt "a fox"
| pbcopy`` copies just that. Progress, warnings and the ledger go to standard error. With
``--json``, standard output is one JSON object instead: the positive and negative prompts, the
components, the refinement prompt (null without ``--critique``), every model's answer
(model, role, text or error) per stage, the critique, the ledger, and ``output``: the line the
plain form prints.

No diffusion model is involved: this path imports neither torch nor diffusers nor
transformers (the image is read with PIL; tests/cli/test_prompt_command.py checks it with
``python -X importtime``). No run folder is written.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def prompt_command(args, loaded) -> int:
    """The body of `critifusion prompt` once the idea is checked and the configuration loaded."""
    from critifusion_tui.headless import make_reporter, say
    from critifusion_tui.redact import configure as remember_secrets
    from critifusion_tui.redact import redact_data

    settings = loaded.settings
    remember_secrets(settings)
    image_png = None
    if args.critique:
        from critifusion_tui.engine.image_input import ImageInputError, critique_png, read_image

        try:
            given = read_image(args.critique)
        except ImageInputError as exc:
            say(f"critifusion prompt: {exc}")
            return EXIT_USAGE
        image_png = critique_png(given)
        for note in given.notes:
            say(f"[critique] info: {given.path.name}: {note}")
    reporter = make_reporter(sys.stderr)
    try:
        result = asyncio.run(_expand(settings, args.idea.strip(), image_png, reporter))
    except KeyboardInterrupt:
        say("critifusion prompt: interrupted")
        return EXIT_INTERRUPTED
    finally:
        reporter.close()
    if args.json:
        print(json.dumps(redact_data(result), indent=2, ensure_ascii=False))
    else:
        from critifusion_tui.redact import redact

        print(redact(result["output"]))
    return EXIT_OK


async def _expand(settings, idea: str, image_png: bytes | None, reporter) -> dict[str, Any]:
    from critifusion_tui.engine.criticore import CritiCore
    from critifusion_tui.engine.events import Notice
    from critifusion_tui.engine.ledger import summarize, summary_lines
    from critifusion_tui.engine.offline import with_rules
    from critifusion_tui.providers.router import ProviderRouter
    from critifusion_tui.redact import redact_fields

    router = with_rules(ProviderRouter(settings))

    def emit(event) -> None:
        reporter(redact_fields(event))

    core = CritiCore.from_settings(router, settings, emit=emit)
    try:
        tags, components = await core.tags_and_components(idea)
        critique = refinement = None
        if image_png is not None:
            critique = await core.critique(image_png, idea, components.components)
            refinement = core.refinement_prompt(critique, tags.positive, idea, style=core.style)
    finally:
        await router.aclose()
    summary = summarize(core.ledger)
    for line in summary_lines(summary):
        emit(Notice("", "info", f"ledger: {line}"))
    return {
        "idea": idea,
        "positive": tags.positive,
        "negative": tags.negative,
        "components": list(components.components),
        "refinement": refinement,
        "answers": {
            "tags": _answers(tags.candidates, tags.aggregator),
            "components": _answers(components.candidates, components.aggregator),
            **({"critique": _answers([c.answer for c in critique.critics], critique.aggregator)} if critique else {}),
        },
        "sources": {
            "tags": tags.source,
            "components": components.source,
            **({"critique": critique.source} if critique else {}),
        },
        "critique": None
        if critique is None
        else {
            "issues": list(critique.issues),
            "refined": critique.refined,
            "alignment": critique.alignment,
            "source": critique.source,
            "critics": [c.record() for c in critique.critics],
        },
        "ledger": summary,
        "output": refinement if refinement is not None else tags.positive,
    }


def _answers(*groups) -> list[dict[str, Any]]:
    """Each model's part: model, role, and its text or its error."""
    return [
        {"model": a.model, "role": a.role, "text": a.text, "error": a.error, "seconds": round(a.seconds, 3)}
        for group in groups
        for a in group
    ]
