"""The prompt editor: exact CLIP counts, where SDXL stops reading, Changed only for the user."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.color import Color
from textual.widgets import Static, TextArea

from critifusion_tui.tui.widgets.prompt_editor import (
    ComponentsEditor,
    PromptEditor,
    clip_counter_text,
)
from tests.tui.conftest import screen_text

# 70 x "red" and nine more one-token words: 81 tokens with BOS and EOS. SDXL reads up to
# "echo" (75 words + BOS + EOS = 77) and never sees "castle river moon garden".
OVER = " ".join(["red"] * 70 + "alpha bravo charlie delta echo castle river moon garden".split())
OVER_LINE = (
    "81 / 77 CLIP tokens: SDXL stops reading after “…bravo charlie delta echo”; not read: “castle river moon garden”"
)


class EditorApp(App):
    def __init__(self, editor: PromptEditor) -> None:
        super().__init__()
        self.editor = editor
        self.changes: list[tuple[str | None, str]] = []

    def compose(self) -> ComposeResult:
        yield self.editor

    def on_prompt_editor_changed(self, message: PromptEditor.Changed) -> None:
        self.changes.append((message.editor.id, message.text))


async def test_counter_shows_the_exact_clip_count():
    app = EditorApp(PromptEditor("Prompt", "a photo of a cat", id="prompt"))
    async with app.run_test(size=(80, 24)):
        editor = app.editor
        assert editor.count == 7
        assert editor.counter_text == "7 / 77 CLIP tokens"
        text = screen_text(app)
        assert "Prompt" in text
        assert "a photo of a cat" in text
        assert "7 / 77 CLIP tokens" in text
        assert not editor.over_limit
        assert not editor.query_one(".prompt-editor--counter").has_class("-over")


async def test_over_the_limit_says_where_sdxl_stops_reading():
    app = EditorApp(PromptEditor("Prompt", OVER, id="prompt"))
    async with app.run_test(size=(80, 24)):
        editor = app.editor
        assert editor.count == 81
        assert editor.over_limit
        assert editor.counter_text == OVER_LINE
        counter = editor.query_one(".prompt-editor--counter", Static)
        assert counter.has_class("-over")
        assert counter.styles.color == Color.parse(app.get_css_variables()["warning"])
        # The line wraps at 80 columns; all of it is on screen.
        flat = " ".join(line.strip() for line in screen_text(app).splitlines())
        assert OVER_LINE in flat


def test_counter_excerpts_are_short():
    long_words = " ".join(["red"] * 74 + ["supercalifragilisticexpialidocious-" * 3, "blue"])
    line, over = clip_counter_text(long_words)
    assert over
    assert "not read: “" in line
    dropped = line.split("not read: “")[1].rstrip("”")
    assert len(dropped) <= 32 and dropped.endswith("…")
    assert clip_counter_text("a photo of a cat") == ("7 / 77 CLIP tokens", False)
    assert clip_counter_text("", 77) == ("2 / 77 CLIP tokens", False)
    assert clip_counter_text("red red red", max_tokens=4) == (
        "5 / 4 CLIP tokens: SDXL stops reading after “red red”; not read: “red”",
        True,
    )


async def test_typing_recounts_and_posts_changed():
    app = EditorApp(PromptEditor("Prompt", "a photo of a cat", id="prompt"))
    async with app.run_test(size=(80, 24)) as pilot:
        editor = app.editor
        editor.text_area.focus()
        editor.text_area.move_cursor(editor.text_area.document.end)
        await pilot.press("s")
        await pilot.pause()
        assert editor.text == "a photo of a cats"
        assert editor.count == 7
        await pilot.press("space", "o", "n")
        await pilot.pause()
        assert editor.count == 8
        assert editor.counter_text == "8 / 77 CLIP tokens"
        assert app.changes[-1] == ("prompt", "a photo of a cats on")
        assert len(app.changes) == 4


async def test_setting_text_in_code_recounts_without_changed():
    app = EditorApp(PromptEditor("Prompt", id="prompt"))
    async with app.run_test(size=(80, 24)) as pilot:
        editor = app.editor
        assert editor.counter_text == "2 / 77 CLIP tokens"
        editor.text = OVER
        await pilot.pause()
        assert editor.counter_text == OVER_LINE
        editor.text = "a photo of a cat"
        await pilot.pause()
        assert editor.count == 7
        assert "7 / 77 CLIP tokens" in screen_text(app)
        assert app.changes == []


async def test_author_line_and_edit_by_the_user():
    model = "aggregator:together:Qwen/Qwen2.5-72B-Instruct-Turbo"
    app = EditorApp(PromptEditor("Refinement prompt", "a photo of a cat", id="refine"))
    async with app.run_test(size=(80, 24)) as pilot:
        editor = app.editor
        assert "written by" not in screen_text(app)
        editor.set_author(model)
        await pilot.pause()
        assert f"written by: {model}" in screen_text(app)
        editor.text_area.focus()
        await pilot.press("x")
        await pilot.pause()
        flat = " ".join(line.strip() for line in screen_text(app).splitlines())
        assert f"written by: {model} · edited by you" in flat
        assert editor.edited
        editor.text = "new text from the program"
        editor.set_author("you")
        await pilot.pause()
        text = screen_text(app)
        assert "written by: you" in text and "edited by" not in text


async def test_read_only_editor_ignores_typing():
    app = EditorApp(PromptEditor("Prompt", "a photo of a cat", read_only=True, id="prompt"))
    async with app.run_test(size=(80, 24)) as pilot:
        app.editor.text_area.focus()
        await pilot.press("x", "y")
        await pilot.pause()
        assert app.editor.text == "a photo of a cat"
        assert app.changes == []


async def test_markup_and_escapes_in_text_are_shown_as_data():
    app = EditorApp(PromptEditor("[b]Prompt[/b]", "a [bold]cat[/]\x1b[31m red", id="prompt"))
    async with app.run_test(size=(80, 24)):
        text = screen_text(app)
        assert "[b]Prompt[/b]" in text
        assert "a [bold]cat[/] red" in text
        assert app.editor.text == "a [bold]cat[/] red"


async def test_components_editor_edits_one_item_per_line():
    editor = ComponentsEditor("Components", ["a red fox", "snow", "pine forest"], id="components")
    app = EditorApp(editor)
    async with app.run_test(size=(80, 24)) as pilot:
        assert editor.items == ["a red fox", "snow", "pine forest"]
        assert editor.count == 3
        assert "3 items, one per line" in screen_text(app)
        editor.text_area.focus()
        editor.text_area.move_cursor(editor.text_area.document.end)
        await pilot.press("enter", "d", "u", "s", "k", "enter", "enter")
        await pilot.pause()
        assert editor.items == ["a red fox", "snow", "pine forest", "dusk"]
        assert "4 items, one per line" in screen_text(app)
        assert app.changes[-1][0] == "components"
        n = len(app.changes)
        editor.items = ["only one"]
        await pilot.pause()
        assert editor.text == "only one"
        assert "1 item, one per line" in screen_text(app)
        assert len(app.changes) == n


def test_help_is_there():
    assert PromptEditor.HELP and ComponentsEditor.HELP
    assert isinstance(PromptEditor("x").text_area, TextArea)


# A prompt long enough to wrap at 40 columns, on two lines of text.
LONG = "a red fox in a snowy pine forest at dawn, soft rim light, volumetric fog\nfilm grain"


async def press_as_a_terminal(app: App, pilot, key: str) -> None:
    """The key as Textual reads it from a terminal: alt+e comes with its character "e" (Esc
    then e), which a text area would type unless a binding takes the key first. (Pilot's
    press sends alt+e without a character.)"""
    from textual import events

    character = key[-1] if key.startswith("alt+") and len(key) == 5 else None
    app.post_message(events.Key(key, character))
    await pilot.pause()


async def test_ctrl_end_and_alt_e_go_to_the_end_of_the_whole_text_and_back():
    app = EditorApp(PromptEditor("Prompt", LONG, id="prompt"))
    async with app.run_test(size=(40, 20)) as pilot:
        area = app.editor.text_area
        area.focus()
        await pilot.pause()
        # End stops at the end of the wrapped line on screen: a tag typed there lands mid-prompt.
        await pilot.press("end")
        assert area.cursor_location != area.document.end
        for key in ("ctrl+end", "alt+e"):
            area.move_cursor((0, 0))
            await press_as_a_terminal(app, pilot, key)
            assert area.cursor_location == area.document.end, key
        await pilot.press(*", 35mm")
        assert app.editor.text == LONG + ", 35mm"  # and no "e" typed by alt+e
        assert app.changes[-1] == ("prompt", LONG + ", 35mm")
        for key in ("ctrl+home", "alt+a"):
            area.move_cursor(area.document.end)
            await press_as_a_terminal(app, pilot, key)
            assert area.cursor_location == (0, 0), key
        assert app.editor.text == LONG + ", 35mm"
        await pilot.press("ctrl+shift+end")
        assert area.selected_text == LONG + ", 35mm"


async def test_the_components_list_has_the_same_keys():
    app = EditorApp(ComponentsEditor("Components", ["a red fox", "snow", "pine trees"], id="components"))
    async with app.run_test(size=(40, 20)) as pilot:
        area = app.editor.text_area
        area.focus()
        await pilot.press("ctrl+end", "enter", *"dawn light")
        assert app.editor.items == ["a red fox", "snow", "pine trees", "dawn light"]


def test_text_keys_take_nothing_from_the_text_area_and_are_in_the_help():
    ours = {key for binding in PromptEditor.BINDINGS for key in binding.key.split(",")}
    theirs = {key for binding in TextArea.BINDINGS for key in binding.key.split(",")}
    assert ours == {"ctrl+end", "alt+e", "ctrl+home", "alt+a", "ctrl+shift+end", "ctrl+shift+home"}
    assert not ours & theirs
    for editor in (PromptEditor, ComponentsEditor):
        assert "ctrl+end or alt+e" in editor.HELP and "ctrl+home or alt+a" in editor.HELP


def test_the_terminal_sequences_arrive_as_these_keys():
    """What a terminal sends for ctrl+end (xterm, and rxvt's form), ctrl+home and alt+e / alt+a
    (Esc then the letter, as over SSH and tmux) reaches the bindings by these names. (Textual's
    parser is private API; this pins the behaviour the bindings rely on.)"""
    import time

    from textual._xterm_parser import XTermParser

    def keys(sequence: str) -> list[str]:
        parser = XTermParser()
        events = list(parser.feed(sequence))
        time.sleep(0.15)  # past the escape delay: a lone Esc + letter is then alt+letter
        return [event.key for event in [*events, *parser.tick()]]

    assert keys("\x1b[1;5F") == ["ctrl+end"] and keys("\x1b[1;5H") == ["ctrl+home"]
    assert keys("\x1be") == ["alt+e"] and keys("\x1ba") == ["alt+a"]


async def test_focus_shows_on_the_border_and_the_label_and_goes_when_the_focus_leaves():
    class Two(App):
        def compose(self) -> ComposeResult:
            yield PromptEditor("Positive", "a fox", id="positive")
            yield PromptEditor("Negative", "blurry", id="negative")

    app = Two()
    async with app.run_test(size=(60, 20)) as pilot:
        accent = Color.parse(app.get_css_variables()["accent"])
        label = {e.id: e.query_one(".prompt-editor--label") for e in app.query(PromptEditor)}
        border = {e.id: e.text_area for e in app.query(PromptEditor)}
        for focused, other in (("positive", "negative"), ("negative", "positive")):
            border[focused].focus()
            await pilot.pause()
            assert label[focused].styles.color.rgb == accent.rgb, focused
            assert border[focused].styles.border_top[1].rgb == accent.rgb
            assert label[other].styles.color.rgb != accent.rgb, other
            assert border[other].styles.border_top[1].rgb != accent.rgb
