"""The run manifest, typed: ``critifusion.run/1`` as pydantic models, its one reader, and the
place a future ``/2`` upgrade goes.

``manifest.json`` is what a run folder says about its run: prompt, seed, settings, each
stage's record, the prompts a person steered and every edit, the ledger, the eval scores.

- The engine writes it: :class:`~critifusion_tui.engine.store.RunStore` keeps it as a dict
  the pipeline changes, and validates it through :class:`RunManifest` before every write
  (:func:`check_before_write`), so a bug that writes a wrong shape fails at once instead of
  leaving a file that history cannot read.
- Everything that reads a run folder (resume, the app's history, ``critifusion run``,
  batches, ``critifusion eval``, ``--replay``) calls :func:`read_manifest` and uses the typed
  fields. A run folder is data from elsewhere (``SECURITY.md``), so the reader caps the size,
  refuses a symbolic link, checks the schema version, validates every field and confines
  every file the manifest names to the folder; each problem is one :class:`StoreError`
  naming the first bad field and the manifest's path, never a pydantic traceback.

Within ``/1`` a manifest may hold keys this version does not know (a later ``/1`` added
them): they are kept, read back and written again untouched. A change older readers would
misread is a new version; see :data:`_UPGRADES`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from critifusion_tui.engine.store_paths import (
    FILE_FIELDS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    StoreError,
    check_file,
    confined,
    read_confined,
    relative_problem,
    show_value,
)

SCHEMA_FAMILY = "critifusion.run/"
VERSION = 1
SCHEMA = f"{SCHEMA_FAMILY}{VERSION}"
SEED_MAX = 2**63 - 1

# "paused": waiting at a gate for a person; "abandoned": a person left the run unfinished.
RunStatus = Literal["running", "done", "failed", "cancelled", "paused", "abandoned"]
StageStatus = Literal["done", "failed", "cancelled", "running"]  # running: stopped mid-way (a crash)
STATUSES: tuple[str, ...] = RunStatus.__args__  # type: ignore[attr-defined]
STAGE_STATUSES: tuple[str, ...] = StageStatus.__args__  # type: ignore[attr-defined]
# The stages of the method in the order a run makes them (SPEC 7's comparison branch last).
STAGE_NAMES = (
    "tags",
    "components",
    "base",
    "critique",
    "refine",
    "rounds",
    "base_original",
    "critique_original",
    "refine_original",
)


# ---------------------------------------------------------------- field types


def _expected(what: str) -> PydanticCustomError:
    """A value of the wrong shape: worded "expected <what>, got <the value>"."""
    return PydanticCustomError("manifest_expected", "expected {expected}", {"expected": what})


def _problem(text: str, key: str = "") -> PydanticCustomError:
    """Any other problem, worded by the caller (`key`: the field below the one validated)."""
    return PydanticCustomError("manifest_problem", "{problem}", {"problem": text, "key": key})


def _whole_number(high: int | None = None) -> AfterValidator:
    def check(value: int) -> int:
        if value < 0 or (high is not None and value > high):
            raise _expected("a whole number" if high is None else f"a whole number from 0 to {high}")
        return value

    return AfterValidator(check)


def _file_name(value: Any) -> Any:
    problem = relative_problem(value)
    if problem:
        raise _problem(problem)
    return value


def _prompt_text(value: Any) -> Any:
    if not isinstance(value, str) or not value.strip():
        raise _expected("the prompt as text")
    return value


def _prompt_value(value: Any) -> Any:
    if not (
        value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    ):
        raise _expected("text or a list of texts")
    return value


Count = Annotated[int, _whole_number()]
Seed = Annotated[int, _whole_number(SEED_MAX)]
# A file inside the run folder: a plain relative name (read_manifest also confines it there).
FileName = Annotated[str, BeforeValidator(_file_name)]
PromptText = Annotated[str, BeforeValidator(_prompt_text)]
PromptValue = Annotated[str | list[str] | None, BeforeValidator(_prompt_value)]


class ManifestModel(BaseModel):
    """A part of the manifest. Types are strict (a "5" is not a whole number); keys this
    version does not know are kept (a later /1 may add them)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    def to_data(self) -> dict[str, Any]:
        """This part as the JSON data it was read from (only the keys that were there)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# ---------------------------------------------------------------- stage records


class AnswerRecord(ManifestModel):
    """One model's part in a text stage: what it said, or why it said nothing usable."""

    model: str  # the slot label ("together:x", "together:x#2" for a second listing)
    text: str = ""
    error: str | None = None
    seconds: float = 0.0
    unusable: bool = False  # it answered, but nothing usable (the error says why)
    notes: list[str] = Field(default_factory=list)
    output: str | None = None  # how a constrained shape was asked for, where it was
    origin: str = Field("provider", alias="from")  # provider, cache or replay


class CriticAnswer(AnswerRecord):
    """One VLM's critique of the base image."""

    issues: list[str] = Field(default_factory=list)
    refined: str = ""
    alignment: float | None = None


class Alignment(ManifestModel):
    """Where adaptive mode's alignment score came from (the critic, or an eval metric)."""

    source: str
    alignment: float
    value: float | None = None  # the metric's own score, before mapping to 0..100
    anchors: list[float] = Field(default_factory=list)
    weights: str | None = None  # the metric's weights fingerprint


class StageRecord(ManifestModel):
    """What every stage record holds; a stage name this version does not know is read as this."""

    status: StageStatus
    seconds: float | None = None
    error: str | None = None  # why it failed


class TextStage(StageRecord):
    """A stage that asks models (tags, components, critique): who answered and who merged."""

    aggregator: list[AnswerRecord] = Field(default_factory=list)
    aggregated_by: str | None = None
    source: str | None = None  # aggregator, candidates/critic, fallback or none
    instructions: dict[str, dict[str, str]] = Field(default_factory=dict)  # template fingerprints


class TagsStage(TextStage):
    """Stage 1: the positive and negative prompts."""

    candidates: list[AnswerRecord] = Field(default_factory=list)
    aggregated: str | None = None
    positive: str | None = None
    negative: str | None = None
    style: str | None = None  # "tags" or "prose"


class ComponentsStage(TextStage):
    """Stage 2: the checkable visual components."""

    candidates: list[AnswerRecord] = Field(default_factory=list)
    components: list[str] = Field(default_factory=list)


class CritiqueStage(TextStage):
    """Stage 4: the critics' view of the base image and the refinement prompt made from it."""

    prompt: str | None = None  # the prompt the criticised image was drawn from
    components: list[str] = Field(default_factory=list)
    candidates: list[CriticAnswer] = Field(default_factory=list)
    issues: list[str] = Field(default_factory=list)
    refined: str | None = None
    alignment: float | None = None  # the critics' mean rating, when asked
    refinement_prompt: str | None = None
    skipped: bool = False  # the person skipped the critique


class DiffusionStage(StageRecord):
    """A diffusion pass (base, refine): what it was asked and the image it drew."""

    prompt: str | None = None
    negative: str | None = None
    image: FileName | None = None
    seed: Count | None = None
    steps: Count | None = None
    guidance: float | None = None


class ImageCritique(ManifestModel):
    """A critique of one image beside the stages' own (a critique round's, a best-of-N base
    candidate's rating): every critic's answer and the merge, if one was asked."""

    candidates: list[CriticAnswer] = Field(default_factory=list)
    aggregator: list[AnswerRecord] = Field(default_factory=list)
    aggregated_by: str | None = None
    source: str | None = None
    seconds: float | None = None


class BaseCandidate(ManifestModel):
    """One of the bases a best-of-N base stage drew (engine/base_candidates.py)."""

    index: Count  # 1-based
    seed: Seed
    image: FileName
    latent: FileName
    score: float | None = None  # 0-100 from base_pick_from; None: not rated
    value: float | None = None  # a metric's own score, before mapping to 0..100
    critique: ImageCritique | None = None  # the critics' answers that rated it (critic only)


class BaseStage(DiffusionStage):
    """Stage 3 (base, base_original): the base image and its latent; with best-of-N bases,
    every candidate drawn, which one is the base, and who picked it."""

    latent: FileName | None = None
    width: Count | None = None
    height: Count | None = None
    candidates: list[BaseCandidate] = Field(default_factory=list)
    picked: Count | None = None  # 1-based index into candidates
    picked_by: str | None = None  # "critic", a metric, "user", or "none" (nothing was rated)

    @model_validator(mode="after")
    def _complete_when_done(self) -> BaseStage:
        # A resumed run refines from these: a completed base without them cannot be used.
        if self.status == "done":
            for key in ("image", "latent", "prompt", "negative"):
                if getattr(self, key) is None:
                    raise _problem("missing from a completed stage", key)
        if self.candidates and (self.picked is None or not 1 <= self.picked <= len(self.candidates)):
            raise _problem(f"expected a candidate's index from 1 to {len(self.candidates)}", "picked")
        return self


class RefineStage(DiffusionStage):
    """Stage 6 (refine, refine_original): SpecFusion's parameters and the refined image."""

    strength: float | None = None
    rho_t: float | None = None
    base_c: float | None = None
    noise_std: float | None = None
    mode: str | None = None  # fixed or adaptive
    alignment: float | None = None
    alignment_from: Alignment | None = None
    latent: FileName | None = None  # the fused latent (full method): critique rounds refine from it


class RoundRecord(ManifestModel):
    """One round of critique rounds: its image and latent, how it was made, and its score."""

    round: Count
    image: FileName
    latent: FileName | None = None
    prompt: str = ""
    seed: Count | None = None
    strength: float | None = None
    score: float | None = None  # 0-100, given when the next critique (or the metric) rated it
    issues: list[str] = Field(default_factory=list)  # what the critique of its image reported
    next_prompt: str | None = None  # the refinement prompt that critique wrote for the next round
    critique: ImageCritique | None = None  # that critique's answers (none: scored by a metric alone)
    seconds: float | None = None


class RoundsStage(StageRecord):
    """Critique rounds (docs/method.md 10.1): every round, and which one is the final image."""

    rounds: list[RoundRecord] = Field(default_factory=list)
    base_score: float | None = None
    score_from: str | None = None
    final: Count | None = None
    final_image: FileName | None = None
    final_by: str | None = None  # "score", "last round" (nothing scored) or "user"
    stopped: str | None = None  # why no further round ran


class Stages(ManifestModel):
    """The stage records by name; only stages that ran (or failed) are present."""

    __pydantic_extra__: dict[str, StageRecord] = Field(init=False)  # type: ignore[assignment]

    tags: TagsStage | None = None
    components: ComponentsStage | None = None
    base: BaseStage | None = None
    critique: CritiqueStage | None = None
    refine: RefineStage | None = None
    rounds: RoundsStage | None = None
    base_original: BaseStage | None = None
    critique_original: CritiqueStage | None = None
    refine_original: RefineStage | None = None

    def records(self) -> dict[str, StageRecord]:
        """Every stage present, the method's in order, then any this version does not know."""
        found = {name: getattr(self, name) for name in STAGE_NAMES if getattr(self, name) is not None}
        return {**found, **(self.model_extra or {})}


# ---------------------------------------------------------------- the rest of the manifest


class PromptEntry(ManifestModel):
    """A steerable prompt's current value (positive, negative, components, refinement) and
    who wrote it ("candidate:<model>", "preset:<name>", "user", ...)."""

    value: PromptValue
    by: str = ""


class Edit(ManifestModel):
    """A change to a steerable prompt: which, by whom, from what to what, when."""

    stage: str
    field: str
    by: str = "user"
    before: str
    after: str
    at: str | None = None


class LedgerCall(ManifestModel):
    """One model call (engine/ledger.py): no text, no URL, no key."""

    stage: str = ""
    role: str = ""
    model: str = ""
    tokens_in: Count = 0
    tokens_out: Count = 0
    usage: str = "none"  # reported (by the server), counted (here) or none
    seconds: float = 0.0
    attempts: Count = 0
    retries: Count = 0
    throttled: Count = 0
    error: str | None = None
    source: str = "provider"  # provider, cache or replay


class LedgerRow(ManifestModel):
    """Totals of one model and role, or of the whole run (no model, no role)."""

    model: str = ""
    role: str = ""
    calls: Count = 0
    tokens_in: Count = 0
    tokens_out: Count = 0
    seconds: float = 0.0
    retries: Count = 0
    throttled: Count = 0
    errors: Count = 0
    free: Count = 0
    counted: bool = False


class LedgerSummary(ManifestModel):
    models: list[LedgerRow] = Field(default_factory=list)
    total: LedgerRow = Field(default_factory=LedgerRow)


class Ledger(ManifestModel):
    calls: list[LedgerCall] = Field(default_factory=list)
    summary: LedgerSummary = Field(default_factory=LedgerSummary)


class RanBy(ManifestModel):
    """A batch process that worked on this run (batch/runner.py stamps one per attempt)."""

    rank: int | None = None
    world_size: int | None = None
    host: str | None = None
    pid: int | None = None
    device: str | None = None
    launch: str | None = None
    at: str | None = None
    took_over_from: dict[str, Any] | None = None


class EvalScores(ManifestModel):
    """``critifusion eval``'s scores, {metric: value} per variant; a score counts only while
    its metric's weights fingerprint is recorded in `models` (eval/runs.py)."""

    models: dict[str, str] = Field(default_factory=dict)
    base_original: dict[str, float] | None = None
    base: dict[str, float] | None = None
    refined_original: dict[str, float] | None = None
    refined: dict[str, float] | None = None
    final: dict[str, float] | None = None  # critique rounds' final image (the best round)

    def of(self, variant: str) -> dict[str, float]:
        return getattr(self, variant, None) or {}


class RunManifest(ManifestModel):
    """``manifest.json`` of schema ``critifusion.run/1``."""

    schema_: Literal["critifusion.run/1"] = Field(alias="schema")
    prompt: PromptText
    seed: Seed
    created: str | None = None  # ISO 8601, local time with its offset
    versions: dict[str, str] = Field(default_factory=dict)  # critifusion-tui, model, torch, ...
    # The settings the run used, as config.settings_for_manifest wrote them. A resume
    # validates them as a configuration (config.validate), with this configuration's providers.
    config: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus = "running"
    variants: Literal["full", "all"] = "full"
    tiny_random: bool = False
    skip_critique: bool = False  # the person chose at the tags gate to skip the next critique
    stages: Stages = Field(default_factory=Stages)
    prompts: dict[str, PromptEntry] = Field(default_factory=dict)
    edits: list[Edit] = Field(default_factory=list)
    ledger: Ledger = Field(default_factory=Ledger)
    diffusion: dict[str, Any] | None = None  # what was loaded: Diffusion.describe()
    resumed: list[str] = Field(default_factory=list)  # when the run was taken up again
    replay_of: str | None = None  # the run folder whose answers were replayed
    ran_by: list[RanBy] = Field(default_factory=list)
    eval: EvalScores | None = None

    def stage(self, name: str) -> StageRecord | None:
        """A stage's record when it completed, else None."""
        record = self.stages.records().get(name)
        return record if record is not None and record.status == "done" else None

    def prompt_value(self, name: str) -> str | list[str] | None:
        entry = self.prompts.get(name)
        return entry.value if entry is not None else None

    @property
    def created_at(self) -> datetime | None:
        """`created` as a time (a time without an offset is local time), or None."""
        try:
            created = datetime.fromisoformat(str(self.created))
        except (TypeError, ValueError):
            return None
        return created if created.tzinfo is not None else created.astimezone()

    @property
    def last_launch(self) -> str | None:
        """The batch launch that last worked on this run."""
        return self.ran_by[-1].launch if self.ran_by else None

    def failed_stage(self) -> tuple[str | None, str | None]:
        """The first failed stage and its error."""
        for name, record in self.stages.records().items():
            if record.status == "failed":
                return name, record.error
        return None, None

    def files(self) -> Iterator[tuple[str, str, int]]:
        """(field, file name, size cap) of every file the manifest names."""
        for name, record in self.stages.records().items():
            for key, limit in FILE_FIELDS.items():
                value = (
                    getattr(record, key, None)
                    if key in type(record).model_fields
                    else (record.model_extra or {}).get(key)
                )
                if value is not None:
                    yield f"stages.{name}.{key}", value, limit
            for number, candidate in enumerate(getattr(record, "candidates", None) or []):
                if isinstance(candidate, BaseCandidate):  # a base's best-of-N candidates
                    yield f"stages.{name}.candidates[{number}].image", candidate.image, FILE_FIELDS["image"]
                    yield f"stages.{name}.candidates[{number}].latent", candidate.latent, FILE_FIELDS["latent"]


# ---------------------------------------------------------------- versions

# The one place an older manifest becomes the current one.
#
# A change an older reader would misread (a key renamed, moved or retyped, a meaning changed)
# raises the version: SCHEMA becomes "critifusion.run/2", the models above describe /2, and
# _UPGRADES[1] turns the data of a /1 manifest (a dict, as read, already checked to be an
# object) into /2 data, "schema" included; the /2 models then validate it as usual. The
# reader applies the steps in turn (1 -> 2 -> 3 ...), so a folder of any earlier version
# opens, and the store's next write saves it in the current version. A key that older
# readers can simply ignore needs no new version: unknown keys are kept within /1.
#
#     def _upgrade_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
#         ...
#         return {**data, "schema": "critifusion.run/2"}
#
#     _UPGRADES[1] = _upgrade_1_to_2
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def schema_version(schema: object) -> int | None:
    """The version of a ``critifusion.run/N`` schema, or None for any other value."""
    if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY):
        number = schema[len(SCHEMA_FAMILY) :]
        if re.fullmatch(r"[1-9][0-9]{0,5}", number):
            return int(number)
    return None


def upgrade(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` in the current version: a newer or unknown schema is refused with what to do."""
    schema = data.get("schema")
    version = schema_version(schema)
    if version is None:
        raise StoreError(f"{where}: schema {show_value(schema)} is not {SCHEMA!r} (not a critifusion-tui run manifest)")
    if version > VERSION:
        raise StoreError(
            f"{where}: made by a newer critifusion-tui (schema {schema}); this version reads {SCHEMA}"
            " — upgrade critifusion-tui to open it"
        )
    while version < VERSION:
        step = _UPGRADES.get(version)
        if step is None:
            raise StoreError(f"{where}: schema {schema} is older than any this version reads ({SCHEMA})")
        data = step(data)
        version += 1
    return data


# ---------------------------------------------------------------- reading and checking


def holds_manifest(folder: Path) -> bool:
    """Whether `folder` holds a manifest, readable or not (an over-long name is "no")."""
    try:
        return (Path(folder) / MANIFEST).exists()
    except OSError:
        return False


def read_manifest(folder: Path) -> RunManifest:
    """``folder/manifest.json``, read as untrusted input and validated; every problem is one
    StoreError naming the first bad field (see the module's docstring)."""
    return read_manifest_data(folder)[1]


def read_manifest_data(folder: Path) -> tuple[dict[str, Any], RunManifest]:
    """The manifest's data (in the current version, every key kept) and its typed view: for
    the store, which goes on changing and writing the data."""
    folder = Path(folder)
    path = folder / MANIFEST
    where = str(path)
    try:
        if not folder.is_dir():
            raise StoreError(f"{folder} is not a run folder (not a folder)")
        if not path.exists() and not path.is_symlink():
            raise StoreError(f"{folder} is not a run folder (no {MANIFEST})")
    except OSError as exc:  # a name too long, a permission
        raise StoreError(f"{folder}: cannot look at it: {exc.strerror or exc}") from None
    raw = read_confined(folder, MANIFEST, "manifest", MAX_MANIFEST_BYTES, where=where)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise StoreError(f"{where}: cannot read the manifest: not UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{where}: cannot read the manifest: {exc}") from None
    except RecursionError:
        raise StoreError(f"{where}: cannot read the manifest: nested too deeply") from None
    if not isinstance(data, dict):
        raise StoreError(f"{where}: expected a JSON object, got {type(data).__name__}")
    data = upgrade(data, where)
    record = validate(data, where)
    for field, name, limit in record.files():
        check_file(confined(folder, name, field, where), name, field, limit, where)
    return data, record


def validate(data: object, where: str) -> RunManifest:
    """`data` as a RunManifest, or one StoreError naming the first bad field."""
    try:
        return RunManifest.model_validate(data)
    except ValidationError as exc:
        raise StoreError(describe_error(exc, where)) from None
    except RecursionError:
        raise StoreError(f"{where}: nested too deeply") from None


def check_before_write(data: dict[str, Any], where: str) -> RunManifest:
    """The store's check of what it is about to write (the JSON data, as a reader will see
    it): a wrong shape is a bug here, refused rather than written."""
    try:
        return validate(data, where)
    except StoreError as exc:
        raise StoreError(
            f"refusing to write a manifest history could not read (a bug; please report it): {exc}"
        ) from None


# What pydantic's error types expect, in the words of the manifest's other messages.
_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "text",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
}


def describe_error(exc: ValidationError, where: str) -> str:
    """The first error of a validation as one line: ``<where>: <field path>: <what is wrong>``."""
    error = exc.errors(include_url=False)[0]
    field = _dotted(error["loc"])
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "manifest_problem":
        field = ".".join(p for p in (field, ctx.get("key", "")) if p)
        text = ctx["problem"]
    elif kind == "missing":
        text = "missing"
    elif kind == "manifest_expected":
        text = f"expected {ctx['expected']}, got {show_value(got)}"
    elif kind == "literal_error":
        text = f"expected {ctx['expected']}, got {show_value(got)}"
    elif kind in _EXPECTED:
        text = f"expected {_EXPECTED[kind]}, got {show_value(got)}"
    else:
        text = f"{error['msg']}, got {show_value(got)}"
    return f"{where}: {field}: {text}" if field else f"{where}: {text}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    """("stages", "tags", "candidates", 1, "model") -> "stages.tags.candidates[1].model"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
