"""Settings: model routing, the base image's diffusion settings and SpecFusion, edited in a form.

Keyboard only: tab / shift+tab walk the fields, ctrl+s saves, escape leaves without saving.
Every field is checked with the same pydantic models that read config.toml, so the form can
never save what ``load_config`` would refuse; an error is shown under its field, as plain
text, and the form stays open. Only the keys whose value changed are written, into the file
in use (or the user config file), with :func:`critifusion_tui.settings_file.save_settings`,
which keeps the file's comments and order.

The screen is dismissed with the dict of changed dotted keys (``{}`` when nothing changed),
or ``None`` on escape. ``saved_path`` holds the file written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Input, Label, Select, Static, TextArea

from critifusion_tui.config import (
    ConfigError,
    CriticoreConfig,
    DiffusionConfig,
    LoopConfig,
    LoadedConfig,
    SpecFusionConfig,
)
from critifusion_tui.settings_file import default_save_path, save_settings

REF_HINT = "one per line: together:<model id>, ollama:<name> or rules"


@dataclass(frozen=True)
class Field:
    """One form field: the dotted config key it edits and how it is shown."""

    key: str
    label: str
    kind: str  # "refs" (TextArea, one per line), "input", "select"
    hint: str
    lines: int = 3

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def choices(self) -> list[str]:
        """A select's options: the values its config model accepts (a Literal)."""
        annotation = MODELS[self.section].model_fields[self.name].annotation
        return [str(value) for value in get_args(annotation)]

    @property
    def widget_id(self) -> str:
        return self.key.replace(".", "-")


SECTIONS: list[tuple[str, str, list[Field]]] = [
    (
        "routing",
        "Routing: which models play each role",
        [
            Field("criticore.candidates", "Candidates", "refs", f"Tag and component ensemble; {REF_HINT}", 5),
            Field("criticore.aggregator", "Aggregator", "refs", f"Merges the answers; tried in order; {REF_HINT}", 2),
            Field(
                "criticore.vlms", "Critics (VLM)", "refs", f"Vision models that criticise the base image; {REF_HINT}", 2
            ),
        ],
    ),
    (
        "diffusion",
        "Diffusion: the base image",
        [
            Field("diffusion.model", "Model", "input", 'Hub id, local folder, .safetensors file or "tiny-random"'),
            Field("diffusion.seed", "Seed", "input", "Whole number >= 0"),
            Field(
                "diffusion.width", "Width", "input", 'Pixels, a multiple of 8 (64-4096), or "auto" (the model\'s size)'
            ),
            Field(
                "diffusion.height",
                "Height",
                "input",
                'Pixels, a multiple of 8 (64-4096), or "auto" (the model\'s size)',
            ),
            Field("diffusion.steps", "Steps", "input", "Denoising steps (1-1000)"),
            Field("diffusion.guidance", "Guidance", "input", "Classifier-free guidance (>= 0)"),
            Field("diffusion.base_candidates", "Base candidates", "input", "Bases drawn, the best refined (1-8)"),
            Field("diffusion.base_pick_from", "Pick bases by", "select", "What rates the base candidates"),
        ],
    ),
    (
        "specfusion",
        "SpecFusion: the refinement",
        [
            Field("specfusion.mode", "Mode", "select", "fixed: from last_k; adaptive (CADR): from alignment_from"),
            Field("specfusion.total_steps", "Total steps", "input", "img2img steps (1-1000)"),
            Field("specfusion.last_k", "Last k", "input", "Steps re-run; strength = last_k / total_steps"),
            Field("specfusion.guidance", "Guidance", "input", '"auto" (from last_k) or a number >= 0'),
            Field("specfusion.rho_t", "rho_t", "input", "Refined latent's low-frequency weight (0-1)"),
            Field("specfusion.base_c", "base_c", "input", "Low-frequency window size (0-1]"),
            Field("loop.rounds", "Rounds", "input", "Critique rounds, the best kept (1-10)"),
            Field("loop.stop_at", "Stop at", "input", 'Score (0-100) that ends the rounds, or "off"'),
            Field("loop.min_gain", "Min gain", "input", 'Stop when a round gains less, or "off"'),
            Field("loop.score_from", "Score rounds by", "select", "What scores each round's image"),
        ],
    ),
]
FIELDS: dict[str, Field] = {f.key: f for _, _, fields in SECTIONS for f in fields}
MODELS: dict[str, type[BaseModel]] = {
    "criticore": CriticoreConfig,
    "diffusion": DiffusionConfig,
    "specfusion": SpecFusionConfig,
    "loop": LoopConfig,
}
# Settings whose None is written and shown as a word (TOML has no null).
NONE_AS = {"specfusion.guidance": "auto", "loop.stop_at": "off", "loop.min_gain": "off"}


def _shown(field: Field, value: Any) -> str:
    """A setting as the form shows it."""
    if field.kind == "refs":
        return "\n".join(value)
    if field.key in NONE_AS and value is None:
        return NONE_AS[field.key]
    return str(value)


def _toml_value(field: Field, value: Any) -> Any:
    """A validated setting as it is written to config.toml (TOML has no null)."""
    if field.key in NONE_AS and value is None:
        return NONE_AS[field.key]
    if isinstance(value, list):
        return list(value)
    return value


class SettingsScreen(ModalScreen[dict | None]):
    """Edit routing, diffusion and SpecFusion settings; ctrl+s saves, escape cancels."""

    HELP = (
        "Tab and shift+tab move between fields. Model lists take one reference per line.\n"
        "ctrl+s checks every field and saves the changed ones to the file shown at the top, "
        "keeping its comments; a field in error says why and nothing is written.\n"
        "escape leaves without saving."
    )

    BINDINGS = [
        Binding(
            "ctrl+s",
            "save",
            "Save",
            id="settings.save",
            priority=True,
            tooltip="Check every field and write the changed ones",
        ),
        Binding("escape", "cancel", "Cancel", id="settings.cancel", tooltip="Close without saving anything"),
    ]

    # Wide: the routing lists span the dialog and the two parameter sections sit side by side.
    # Wide and tall: every field also shows its hint, and the dialog is only as tall as its form.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (38, "-tall")]

    DEFAULT_CSS = """
    SettingsScreen {
        align: center middle;
    }
    SettingsScreen #dialog {
        width: 100%;
        height: 100%;
        max-width: 180;
        border: round $primary;
        border-title-style: bold;
        background: $surface;
        padding: 0 1;
    }
    SettingsScreen.-wide #dialog {
        width: 96%;
    }
    SettingsScreen.-wide.-tall #dialog {
        height: auto;
        max-height: 100%;
    }
    SettingsScreen #target, SettingsScreen #overrides {
        height: auto;
        color: $text-muted;
    }
    SettingsScreen #form {
        height: 1fr;
        scrollbar-size-vertical: 1;
    }
    SettingsScreen.-wide.-tall #form {
        height: auto;
        max-height: 80vh;
    }
    SettingsScreen #params {
        height: auto;
        layout: vertical;
    }
    SettingsScreen.-wide #params {
        layout: horizontal;
    }
    SettingsScreen .section {
        height: auto;
    }
    SettingsScreen.-wide #params .section {
        width: 1fr;
    }
    SettingsScreen.-wide #section-diffusion {
        padding-right: 2;
    }
    SettingsScreen .section-title {
        text-style: bold;
        color: $accent;
        margin-top: 1;
    }
    SettingsScreen .row {
        height: auto;
        margin-bottom: 0;
    }
    SettingsScreen .row > Label {
        width: 14;
    }
    /* The fields are compact (no border), so focus marks the field's label in the accent
       colour and tints the field itself. ("-focused" is set in code: Textual does not restyle
       a label by its parent's :focus-within when the focus leaves.) */
    SettingsScreen .row.-focused > Label {
        background: $accent;
        color: $background;
        text-style: bold;
    }
    SettingsScreen .cell Input:focus, SettingsScreen .cell TextArea:focus,
    SettingsScreen .cell Select:focus-within {
        background-tint: $accent 12%;
    }
    SettingsScreen .cell {
        width: 1fr;
        height: auto;
    }
    SettingsScreen .cell Input, SettingsScreen .cell Select {
        width: 1fr;
    }
    SettingsScreen .cell TextArea {
        width: 1fr;
        height: auto;
        max-height: 8;
    }
    SettingsScreen .hint {
        color: $text-muted;
        height: auto;
        display: none;
    }
    SettingsScreen.-wide.-tall .hint {
        display: block;
    }
    SettingsScreen .error {
        color: $error;
        height: auto;
        display: none;
    }
    SettingsScreen .error.-shown {
        display: block;
    }
    SettingsScreen #settings-error {
        color: $error;
        height: auto;
        max-height: 6;
        display: none;
    }
    SettingsScreen #settings-error.-shown {
        display: block;
    }
    """

    def __init__(self, loaded: LoadedConfig, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self.loaded = loaded
        self.target: Path = default_save_path(loaded)
        self.saved_path: Path | None = None
        self.errors: dict[str, str] = {}

    # ---------------------------------------------------------------- layout

    def current(self, key: str) -> Any:
        section, name = key.split(".", 1)
        return getattr(getattr(self.loaded.settings, section), name)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog") as dialog:
            dialog.border_title = "Settings"
            exists = self.target.exists()
            yield Static(
                Text(f"Saves to {self.target}" + ("" if exists else " (a new file)")),
                id="target",
            )
            overridden = [item.partition("=")[0].strip() for item in self.loaded.overrides]
            if overridden:
                yield Static(
                    Text(
                        "Overridden for this session (--set / --demo), so a saved change to these"
                        " shows only in later sessions: " + ", ".join(dict.fromkeys(overridden))
                    ),
                    id="overrides",
                )
            with VerticalScroll(id="form"):
                routing, *params = SECTIONS
                yield from self._section(*routing)
                with Horizontal(id="params"):
                    for section in params:
                        yield from self._section(*section)
            yield Static(id="settings-error")
        yield Footer()

    def _section(self, section_id: str, title: str, fields: list[Field]) -> ComposeResult:
        with Vertical(classes="section", id=f"section-{section_id}"):
            yield Static(title, classes="section-title")
            for field in fields:
                yield from self._row(field)

    def _row(self, field: Field) -> ComposeResult:
        value = self.current(field.key)
        with Horizontal(classes="row", id=f"row-{field.widget_id}"):
            yield Label(field.label)
            with Vertical(classes="cell"):
                widget: Widget
                if field.kind == "refs":
                    widget = TextArea(
                        _shown(field, value),
                        id=field.widget_id,
                        soft_wrap=True,
                        show_line_numbers=True,
                        tab_behavior="focus",
                        compact=True,
                    )
                    widget.styles.min_height = field.lines
                elif field.kind == "select":
                    widget = Select(
                        [(choice, choice) for choice in field.choices()],
                        value=value,
                        allow_blank=False,
                        id=field.widget_id,
                        compact=True,
                    )
                else:
                    widget = Input(_shown(field, value), id=field.widget_id, compact=True)
                widget.tooltip = field.hint
                yield widget
                yield Static(id=f"{field.widget_id}-error", classes="error")
                yield Static(field.hint, classes="hint", markup=False)

    def on_mount(self) -> None:
        self.query_one("#criticore-candidates").focus()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        """Mark the focused field's row (its label shows the focus)."""
        for row in self.query(".row"):
            row.set_class(row in event.widget.ancestors, "-focused")

    # ---------------------------------------------------------------- reading the form

    def raw(self, field: Field) -> Any:
        """What the person typed, before validation."""
        widget = self.query_one(f"#{field.widget_id}")
        if isinstance(widget, TextArea):
            return [line.strip() for line in widget.text.splitlines() if line.strip()]
        if isinstance(widget, Select):
            return widget.value
        assert isinstance(widget, Input)  # the third kind, "input" (compose)
        text = widget.value.strip()
        if field.key in NONE_AS and text == "":
            return NONE_AS[field.key]
        return text

    def collect(self) -> tuple[dict[str, Any], dict[str, str]]:
        """The changed keys (as config.toml values) and the errors, per dotted key."""
        changes: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for section, model in MODELS.items():
            fields = [f for f in FIELDS.values() if f.section == section]
            base = getattr(self.loaded.settings, section).model_dump()
            data = {**base, **{f.name: self.raw(f) for f in fields}}
            try:
                validated = model.model_validate(data)
            except ValidationError as exc:
                for err in exc.errors():
                    name = str(err["loc"][0]) if err["loc"] else ""
                    key = f"{section}.{name}"
                    if key not in FIELDS:
                        key = f"{section}.{fields[0].name}"
                    index = next((p for p in err["loc"][1:] if isinstance(p, int)), None)
                    message = err["msg"].removeprefix("Value error, ")
                    if err["type"] == "too_short" and FIELDS[key].kind == "refs":
                        message = "name at least one model"
                    if index is not None:
                        message = f"line {index + 1}: {message}"
                    errors[key] = f"{errors[key]}\n{message}" if key in errors else message
                continue
            for field in fields:
                new = getattr(validated, field.name)
                if new != self.current(field.key):
                    changes[field.key] = _toml_value(field, new)
        return changes, errors

    # ---------------------------------------------------------------- showing errors

    def show_errors(self, errors: dict[str, str], general: str = "") -> None:
        self.errors = dict(errors)
        for key, field in FIELDS.items():
            box = self.query_one(f"#{field.widget_id}-error", Static)
            message = errors.get(key, "")
            box.update(Text(message))
            box.set_class(bool(message), "-shown")
        overall = self.query_one("#settings-error", Static)
        if errors and not general:
            general = f"Not saved: {len(errors)} field(s) need a fix."
        overall.update(Text(general))
        overall.set_class(bool(general), "-shown")
        if errors:
            first = next(f for f in FIELDS.values() if f.key in errors)
            widget = self.query_one(f"#{first.widget_id}")
            widget.focus()
            self.query_one("#form", VerticalScroll).scroll_to_widget(widget, animate=False)

    # ---------------------------------------------------------------- actions

    def action_save(self) -> None:
        changes, errors = self.collect()
        if errors:
            self.show_errors(errors)
            return
        if changes:
            try:
                self.saved_path = save_settings(changes, self.target)
            except ConfigError as exc:
                message = str(exc)
                hit = {k: message for k in changes if k in message}
                self.show_errors(hit, f"Not saved: {message}")
                return
        self.dismiss(changes)

    def action_cancel(self) -> None:
        self.dismiss(None)
