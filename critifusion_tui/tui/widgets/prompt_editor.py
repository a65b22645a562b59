"""A labelled prompt editor with a live CLIP token counter, and its one-item-per-line variant.

SDXL's text encoders read at most 77 CLIP tokens (BOS and EOS included) and silently ignore
the rest. The counter under the text says how many tokens the prompt has and, when it is over
the limit, exactly where SDXL stops reading:

    92 / 77 CLIP tokens: SDXL stops reading after “…soft rim light”; not read: “volumetric fog…”

Counting is pure Python and costs microseconds (tokens.count_tokens caches per word), so the
counter is redrawn on every change without a debounce.

Keys beyond the text area's own: ctrl+end goes to the end of the whole text (End stops at the
end of the wrapped line, so a tag appended after End landed mid-prompt), ctrl+home to its
start. Over SSH and tmux ctrl+end and ctrl+home may never arrive (PuTTY, macOS Terminal and
some tmux setups send nothing distinct), so alt+e and alt+a do the same: the text-wide
counterparts of the area's ctrl+e and ctrl+a (end and start of the line). Emacs' alt+> and
alt+< are not usable: Textual reads Esc + a punctuation key as the bare key and would type it.
"""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Static, TextArea

from critifusion_tui.engine.tokens import CLIP_MAX_TOKENS, clip77_cut, count_tokens
from critifusion_tui.tui.widgets._safe import safe_str

__all__ = ["ComponentsEditor", "PromptEditor", "clip_counter_text"]

_EXCERPT_WORDS = 4
_EXCERPT_CHARS = 32


def _tail(text: str) -> str:
    """The last few words of `text`, with "…" in front when something comes before them."""
    words = text.split()
    excerpt = " ".join(words[-_EXCERPT_WORDS:])
    cut = len(words) > _EXCERPT_WORDS
    if len(excerpt) > _EXCERPT_CHARS:
        excerpt, cut = excerpt[-(_EXCERPT_CHARS - 1) :].lstrip(), True
    return ("…" if cut else "") + excerpt


def _head(text: str) -> str:
    """The first few words of `text`, with "…" after them when something follows."""
    words = text.split()
    excerpt = " ".join(words[:_EXCERPT_WORDS])
    cut = len(words) > _EXCERPT_WORDS
    if len(excerpt) > _EXCERPT_CHARS:
        excerpt, cut = excerpt[: _EXCERPT_CHARS - 1].rstrip(), True
    return excerpt + ("…" if cut else "")


def clip_counter_text(text: str, max_tokens: int = CLIP_MAX_TOKENS) -> tuple[str, bool]:
    """The counter line for `text` and whether it is over `max_tokens`."""
    count = count_tokens(text)
    line = f"{count} / {max_tokens} CLIP tokens"
    cut = clip77_cut(text, max_tokens)
    if cut is None:
        return line, False
    dropped = f"not read: “{_head(text[cut:])}”"
    if cut == 0:
        return f"{line}: SDXL reads none of it; {dropped}", True
    return f"{line}: SDXL stops reading after “{_tail(text[:cut])}”; {dropped}", True


class PromptEditor(Vertical):
    """A label, a soft-wrapping text area and a CLIP token counter under it."""

    HELP = """\
A prompt for SDXL. Type to edit; Tab moves on to the next field.
ctrl+end or alt+e: end of the whole text (to append a tag); ctrl+home or alt+a: its start.
End and ctrl+e stop at the end of the line on screen, Home and ctrl+a at its start.
The line under it counts CLIP tokens: SDXL reads at most 77 (start and end markers included).
Over the limit it shows the last words SDXL reads and the first words it never sees.
"written by" says whether a model or you wrote the text."""

    # priority: a terminal sends alt+e as Esc then "e", which arrives with the character "e";
    # the text area would type it before a plain binding of its parent saw the key.
    BINDINGS = [
        Binding(
            "ctrl+end,alt+e",
            "text_end",
            "End of text",
            show=False,
            priority=True,
            id="prompt-editor.text-end",
            tooltip="Move the cursor to the end of the whole text (alt+e where ctrl+end does not arrive)",
        ),
        Binding(
            "ctrl+home,alt+a",
            "text_start",
            "Start of text",
            show=False,
            priority=True,
            id="prompt-editor.text-start",
            tooltip="Move the cursor to the start of the whole text (alt+a where ctrl+home does not arrive)",
        ),
        Binding(
            "ctrl+shift+end",
            "text_end(True)",
            "Select to end of text",
            show=False,
            id="prompt-editor.select-to-end",
            tooltip="Select from the cursor to the end of the whole text",
        ),
        Binding(
            "ctrl+shift+home",
            "text_start(True)",
            "Select to start of text",
            show=False,
            id="prompt-editor.select-to-start",
            tooltip="Select from the cursor to the start of the whole text",
        ),
    ]

    DEFAULT_CSS = """
    PromptEditor {
        height: auto;
        & > .prompt-editor--label { color: $text-muted; text-style: bold; padding: 0 1; }
        & > TextArea { height: auto; min-height: 3; max-height: 8; }
        & > TextArea:focus { border: tall $accent; }
        &.-focused > .prompt-editor--label { color: $accent; }
        & > .prompt-editor--counter { color: $text-muted; height: auto; padding: 0 1; }
        & > .prompt-editor--counter.-over { color: $warning; }
        & > .prompt-editor--author { color: $text-muted; text-style: italic; padding: 0 1; }
    }
    """

    class Changed(Message):
        """The user edited the text (not posted when the program sets it)."""

        def __init__(self, editor: PromptEditor, text: str) -> None:
            super().__init__()
            self.editor = editor
            self.text = text

        @property
        def control(self) -> PromptEditor:
            return self.editor

    def __init__(
        self,
        label: str,
        text: str = "",
        *,
        max_tokens: int = CLIP_MAX_TOKENS,
        read_only: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.label = label
        self.max_tokens = max_tokens
        self._count = 0
        self._over = False
        self._line = ""
        self._author = ""
        self._edited = False
        self.text_area = TextArea(
            safe_str(text),
            soft_wrap=True,
            show_line_numbers=False,
            read_only=read_only,
            tab_behavior="focus",
            classes="prompt-editor--text",
        )
        self._counter = Static("", classes="prompt-editor--counter", markup=False)
        self._author_line = Static("", classes="prompt-editor--author", markup=False)
        self._author_line.display = False
        self._recount()

    def compose(self) -> ComposeResult:
        yield Label(safe_str(self.label), classes="prompt-editor--label", markup=False)
        yield self.text_area
        yield self._counter
        yield self._author_line

    # --- public API -------------------------------------------------------------------------

    @property
    def text(self) -> str:
        return self.text_area.text

    @text.setter
    def text(self, value: str) -> None:
        """Replace the text without posting `Changed` (the program, not the user, wrote it)."""
        with self.prevent(TextArea.Changed):
            self.text_area.load_text(safe_str(value))
        self._edited = False
        self._show_author()
        self._recount()

    @property
    def count(self) -> int:
        """CLIP tokens of the text, BOS and EOS included."""
        return self._count

    @property
    def over_limit(self) -> bool:
        return self._over

    @property
    def counter_text(self) -> str:
        """The counter line as shown."""
        return self._line

    @property
    def read_only(self) -> bool:
        return self.text_area.read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self.text_area.read_only = value

    @property
    def author(self) -> str:
        return self._author

    @property
    def edited(self) -> bool:
        """Whether the user changed the text since it was last set by the program."""
        return self._edited

    def set_author(self, who: str) -> None:
        """Show who wrote the text: a model ref ("aggregator:together:…") or "you"; "" hides it."""
        self._author = who
        self._show_author()

    # --- actions ----------------------------------------------------------------------------

    def action_text_end(self, select: bool = False) -> None:
        """The cursor to the end of the whole text (not of the wrapped line), in view."""
        self.text_area.move_cursor(self.text_area.document.end, select=select)

    def action_text_start(self, select: bool = False) -> None:
        self.text_area.move_cursor((0, 0), select=select)

    # --- internals --------------------------------------------------------------------------

    # The label shows the focus. A class, not `:focus-within > .label` in CSS: Textual does not
    # restyle a child by its parent's :focus-within when the focus leaves.
    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self.add_class("-focused")

    def on_descendant_blur(self, event: events.DescendantBlur) -> None:
        self.remove_class("-focused")

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if event.text_area is not self.text_area:
            return
        event.stop()
        self._recount()
        if not self._edited:
            self._edited = True
            self._show_author()
        self.post_message(self.Changed(self, self.text))

    def _show_author(self) -> None:
        who = self._author
        if not who:
            self._author_line.display = False
            return
        line = f"written by: {who}"
        if self._edited and who != "you":
            line += " · edited by you"
        self._author_line.update(safe_str(line))
        self._author_line.display = True

    def _counter_line(self) -> tuple[int, str, bool]:
        text = self.text
        line, over = clip_counter_text(text, self.max_tokens)
        return count_tokens(text), line, over

    def _recount(self) -> None:
        self._count, self._line, self._over = self._counter_line()
        self._counter.update(self._line)
        self._counter.set_class(self._over, "-over")


class ComponentsEditor(PromptEditor):
    """The same editor for a list: one item per line. `count` is the number of items."""

    HELP = """\
A list, one item per line (for example the components the critic checks in the image).
Type to edit; empty lines are ignored. Tab moves on to the next field.
ctrl+end or alt+e: end of the whole list (to add an item); ctrl+home or alt+a: its start."""

    def __init__(
        self,
        label: str,
        items: list[str] | tuple[str, ...] = (),
        *,
        read_only: bool = False,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(label, "\n".join(items), read_only=read_only, id=id, classes=classes)

    @property
    def items(self) -> list[str]:
        """The non-empty lines, stripped."""
        return [line.strip() for line in self.text.splitlines() if line.strip()]

    @items.setter
    def items(self, value: list[str] | tuple[str, ...]) -> None:
        """Replace the list without posting `Changed`."""
        self.text = "\n".join(item.replace("\n", " ").strip() for item in value)

    def set_items(self, items: list[str] | tuple[str, ...]) -> None:
        self.items = items

    def _counter_line(self) -> tuple[int, str, bool]:
        n = len(self.items)
        return n, f"{n} item{'' if n == 1 else 's'}, one per line", False
