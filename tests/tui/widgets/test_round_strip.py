"""The round strip's second line: what the highlighted round's critique found, as plain text."""

from __future__ import annotations

from textual.app import App, ComposeResult

from critifusion_tui.tui.widgets.round_strip import RoundStrip


class StripApp(App):
    def compose(self) -> ComposeResult:
        yield RoundStrip()


async def test_the_detail_line_shows_a_critics_words_as_text_never_as_markup_or_escapes():
    app = StripApp()
    async with app.run_test(size=(100, 4)) as pilot:
        strip = app.query_one(RoundStrip)
        hostile = "[bold red]the fox[/bold red] is \x1b[31mmissing\x1b]0;pwned\x07"
        strip.show_rounds(
            [
                {
                    "round": 1,
                    "image": "refined.png",
                    "seed": 4141,
                    "score": 62.0,
                    "scored": True,
                    "issues": [hostile, "no lantern"],
                    "critique": {"candidates": []},
                },
                {
                    "round": 2,
                    "image": "refined_r2.png",
                    "seed": 5141,
                    "score": 84.0,
                    "scored": True,
                    "issues": [],
                    "critique": {"candidates": []},
                },
                {"round": 3, "image": "refined_r3.png", "seed": 6141},
            ],
            final=2,
        )
        await pilot.pause()
        assert strip.highlighted == 2
        assert strip.detail() == "r2 (seed 5141): its critique found nothing left to fix"
        strip.focus()
        await pilot.press("left")
        detail = strip.detail()
        assert detail.startswith("r1 (seed 4141): its critique found: [bold red]the fox[/bold red] is ")
        assert detail.endswith("; no lantern") and "\x1b" not in detail and "\x07" not in detail
        await pilot.press("right", "right")
        assert strip.detail() == "r3 (seed 6141): not criticised (the rounds ended first)"
        strip.show_rounds(strip.rounds, running=True)
        assert strip.detail() == "r3 (seed 6141): waiting for its critique"
