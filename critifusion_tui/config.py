"""Typed configuration: config.toml into pydantic models, with errors a person can act on.

Lookup order (the first that exists wins, and only that one is read):
``--config PATH``, ``$CRITIFUSION_CONFIG``, ``./config.toml``, the user config directory
(``critifusion/config.toml`` under the platform's config folder), then built-in defaults.
``--set section.key=value`` overrides single keys after the file is read.

Every failure becomes one :class:`ConfigError` whose message names the file, the line or key,
and what was expected, so the command line can print it and exit 2 without a traceback.
Secrets never live here: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from critifusion_tui import instructions as _ins
from critifusion_tui.presets import DEFAULT_NEGATIVE, PRESETS
from critifusion_tui.model_refs import ModelRef, ModelRefError

ENV_CONFIG = "CRITIFUSION_CONFIG"
CONFIG_NAME = "config.toml"
DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
DEFAULT_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
# Key names that would hold a secret: refused in files and in --set alike.
SECRET_KEYS = frozenset({"api_key", "apikey", "api_token", "token", "secret", "password"})


# `--demo`: everything offline and small, so a newcomer sees every stage in about a minute
# with no GPU, key or server. Applied before the user's own --set, which still wins.
DEMO_OVERRIDES = (
    "diffusion.model=tiny-random",
    "criticore.candidates=['rules']",
    "criticore.aggregator=rules",
    "criticore.vlms=['rules']",
    "diffusion.width=256",
    "diffusion.height=256",
    "diffusion.steps=20",
    "specfusion.total_steps=20",
    "specfusion.last_k=15",
)


class ConfigError(Exception):
    """A configuration problem, already worded for the person who has to fix it."""


def _check_ref(value: Any) -> Any:
    if isinstance(value, str):
        try:
            ModelRef.parse(value)
        except ModelRefError as exc:
            raise ValueError(str(exc)) from None
        return value.strip()
    return value


ModelRefStr = Annotated[str, BeforeValidator(_check_ref)]


def _one_or_many(value: Any) -> Any:
    # The aggregator may be one ref or a list tried in order; both spellings are natural.
    return [value] if isinstance(value, str) else value


class Section(BaseModel):
    # Typos must not fall back silently to a default: unknown keys are errors.
    # NaN and infinity are never a setting (guidance = inf draws a black image): refused.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # Subclasses give Field defaults as `default=`: type checkers read the constructor from it
    # (dataclass_transform) and take a positional default for a required field.


class TogetherConfig(Section):
    api_key_env: str = Field(default="TOGETHER_API_KEY", min_length=1)
    base_url: str = ""
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0)
    max_concurrency: int = Field(default=16, ge=1)


class OllamaConfig(Section):
    host: str = Field(default_factory=lambda: os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST)
    timeout_s: float = Field(default=120.0, gt=0)
    keep_alive: str = "5m"
    max_concurrency: int = Field(default=4, ge=1)
    # Before each diffusion, ask Ollama to unload the models it holds (they share the GPU).
    # "auto": when the host is this machine and free CUDA memory is short; never on the CPU.
    unload_before_diffusion: Literal["auto"] | bool = "auto"


class OpenAIConfig(Section):
    # vLLM's default address; llama.cpp's server listens on :8080, LM Studio on :1234.
    base_url: str = Field(default="http://127.0.0.1:8000/v1", min_length=1)
    # Empty: the server needs no key (local servers); else the variable that holds it.
    api_key_env: str = ""
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0)


class ProvidersConfig(Section):
    together: TogetherConfig = Field(default_factory=TogetherConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)


class _InstructionsBase(Section):
    # "tags": SDXL comma-separated tag lists (the method's own); "prose": short sentences.
    style: Literal["tags", "prose"] = "tags"


def _check_inline_template(value: Any, info) -> Any:
    # A file's placeholders are checked when it is read (load_config), with its own line.
    if isinstance(value, str) and value.strip() and not _ins.is_template_path(value):
        unknown = _ins.unknown_placeholders(info.field_name, value)
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}} on line"
                f" {_ins.line_of_placeholder(value, unknown[0])} of the template;"
                f" placeholders it may use: {_ins.allowed_placeholders(info.field_name)}"
            )
    return value


# One key per message template (instructions.py), "" = the style's built-in text.
# Typed as Any values: mypy checks a **dict's value type against every keyword create_model
# takes (__base__, __config__, ...), not only the field definitions.
_template_fields: dict[str, Any] = {name: (str, "") for name in _ins.NAMES}
InstructionsConfig = create_model(
    "InstructionsConfig",
    __base__=_InstructionsBase,
    __validators__={"_placeholders": field_validator(*_ins.NAMES)(_check_inline_template)},
    **_template_fields,
)


class CriticoreConfig(Section):
    preset: str = "hq_preference"
    candidates: list[ModelRefStr] = Field(
        default_factory=lambda: [
            "together:meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-72B-Instruct-Turbo",
            "together:Qwen/Qwen2.5-Coder-32B-Instruct",
            "together:deepseek-ai/DeepSeek-V3",
            "together:nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        ],
        min_length=1,
    )
    aggregator: Annotated[list[ModelRefStr], BeforeValidator(_one_or_many)] = Field(
        default_factory=lambda: ["together:Qwen/Qwen2.5-72B-Instruct-Turbo"], min_length=1
    )
    vlms: list[ModelRefStr] = Field(
        default_factory=lambda: ["together:meta-llama/Llama-4-Maverick-17B-128E-Instruct-FP8"],
        min_length=1,
    )
    # "read-write": keep every answer under the user cache directory, keyed by (model,
    # messages, parameters), and take it from there when the same call comes again.
    cache: Literal["off", "read-write"] = "off"
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig)  # type: ignore[valid-type]

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(sorted(PRESETS))}")
        return value

    def refs(self) -> dict[str, list[ModelRef]]:
        """Every role's models, parsed."""
        return {
            "candidates": [ModelRef.parse(r) for r in self.candidates],
            "aggregator": [ModelRef.parse(r) for r in self.aggregator],
            "vlms": [ModelRef.parse(r) for r in self.vlms],
        }


Pixels = Annotated[int, Field(ge=64, le=4096)]


def _size(value: Any) -> Any:
    # "auto" = the model's native size (1024 for SDXL, 512 for SD 1.5), resolved at load.
    return value.strip().lower() if isinstance(value, str) else value


Size = Annotated[Pixels | Literal["auto"], BeforeValidator(_size)]


def _auto_switch(value: Any) -> Any:
    # One message for a wrong value, not one per member of the union.
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[word]
    raise ValueError('expected "auto", true or false')


AutoSwitch = Annotated[Literal["auto"] | bool, BeforeValidator(_auto_switch)]

# Where a 0-100 alignment score of an image comes from: the VLM critics' own <alignment>
# rating, or an eval metric scoring the image against the user's prompt (mapped to 0-100).
ScoreSource = Literal["critic", "pickscore", "hpsv2", "imagereward", "aesthetic"]


def _off_is_none(value: Any) -> Any:
    # TOML has no null: "off" (or leaving the key out) means "no such condition".
    return None if value == "off" else value


class DiffusionConfig(Section):
    model: str = Field(default=DEFAULT_SDXL, min_length=1)
    device: str = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    variant: Literal["auto", "fp16", "none"] = "auto"
    single_file_config: str = ""
    width: Size = "auto"
    height: Size = "auto"
    steps: int = Field(default=50, ge=1, le=1000)
    guidance: float = Field(default=4.5, ge=0)
    seed: int = Field(default=2026, ge=0, lt=2**63)
    negative: str = DEFAULT_NEGATIVE
    cpu_offload: bool = False
    vae_tiling: bool = False
    # Speed switches (engine/devices.py resolves them): "auto" is on for CUDA only.
    channels_last: AutoSwitch = "auto"
    fuse_qkv: AutoSwitch = "auto"
    compile: bool = False
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    # Best-of-N bases (docs/method.md, beyond the paper): draw this many bases, one seed each,
    # and refine the one `base_pick_from` rates best. 1 is the paper.
    base_candidates: int = Field(default=1, ge=1, le=8)
    base_pick_from: ScoreSource = "critic"

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value % 8:
            raise ValueError("must be a multiple of 8 (the VAE works on 8x8 pixel cells)")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError(f"expected 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got {value!r}")
        return value

    @model_validator(mode="after")
    def _compile_needs_cuda(self) -> DiffusionConfig:
        # With device "auto" this is checked when the device is known (the load plan).
        if self.compile and self.device in ("cpu", "mps"):
            raise ValueError(
                f'compile = true needs a CUDA GPU, but device = "{self.device}": compiling the UNet '
                "there takes minutes and gains nothing. Set compile = false."
            )
        return self

    def size(self) -> tuple[int | None, int | None]:
        """(width, height) in pixels, None where "auto" (the model's native size)."""
        return (
            None if self.width == "auto" else int(self.width),
            None if self.height == "auto" else int(self.height),
        )


def _auto_is_none(value: Any) -> Any:
    # TOML has no null: "auto" (or leaving the key out) means "use the last_k rule".
    return None if value == "auto" else value


class SpecFusionConfig(Section):
    mode: Literal["fixed", "adaptive"] = "fixed"
    # Where adaptive mode (CADR) takes its 0-100 alignment score from: the VLM critics' own
    # <alignment> rating, or an eval metric scoring the base image against the user's prompt.
    alignment_from: ScoreSource = "critic"
    total_steps: int = Field(default=50, ge=1, le=1000)
    last_k: int = Field(default=37, ge=1, le=1000)
    guidance: Annotated[float | None, BeforeValidator(_auto_is_none)] = Field(default=None, ge=0)
    rho_t: float = Field(default=0.85, ge=0, le=1)
    base_c: float = Field(default=0.5, gt=0, le=1)
    noise_std: float = Field(default=0.001, ge=0)


class LoopConfig(Section):
    """Critique rounds (docs/method.md, beyond the paper): after the paper's one critique and
    one refinement, criticise the refined image again and refine it again, up to `rounds` in
    all, stopping early when the score reaches `stop_at` or a round gains less than
    `min_gain`. The final image is the best-scoring round."""

    rounds: int = Field(default=1, ge=1, le=10)
    stop_at: Annotated[float | None, BeforeValidator(_off_is_none)] = Field(default=None, ge=0, le=100)
    min_gain: Annotated[float | None, BeforeValidator(_off_is_none)] = Field(default=None, ge=-100, le=100)
    score_from: ScoreSource = "critic"


class OutputConfig(Section):
    dir: str = Field(default="outputs", min_length=1)

    def path(self) -> Path:
        return Path(self.dir).expanduser()


class TuiConfig(Section):
    images: Literal["auto", "kitty", "sixel", "halfblock", "none"] = "auto"


# The four human-aligned metrics of SPEC 9, in the paper's column order.
MetricName = Literal["pickscore", "hpsv2", "imagereward", "aesthetic"]
EVAL_METRICS: tuple[MetricName, ...] = ("pickscore", "hpsv2", "imagereward", "aesthetic")


class EvalConfig(Section):
    """`critifusion eval`: which metrics, and where each one's published weights are.

    Every weight is a hub reference (``owner/repo`` for a folder, ``owner/repo/file`` for one
    file, read from the standard Hugging Face cache, never downloaded) or a local path.
    """

    metrics: list[MetricName] = Field(default_factory=lambda: list(EVAL_METRICS), min_length=1)
    batch_size: int = Field(default=8, ge=1, le=1024)
    pickscore_model: str = Field(default="yuvalkirstain/PickScore_v1", min_length=1)
    pickscore_processor: str = Field(default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", min_length=1)
    hpsv2_version: Literal["v2.1", "v2.0"] = "v2.1"
    # "auto": the published file of hpsv2_version (xswu/HPSv2, HPS_v2.1_compressed.pt or
    # HPS_v2_compressed.pt).
    hpsv2_checkpoint: str = Field(default="auto", min_length=1)
    hpsv2_clip: str = Field(default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", min_length=1)
    imagereward_checkpoint: str = Field(default="THUDM/ImageReward/ImageReward.pt", min_length=1)
    imagereward_med_config: str = Field(default="THUDM/ImageReward/med_config.json", min_length=1)
    # Not in the list: ImageReward tokenizes with bert-base-uncased (plus two special
    # tokens it adds itself), which its checkpoint does not carry.
    imagereward_tokenizer: str = Field(default="google-bert/bert-base-uncased", min_length=1)
    aesthetic_checkpoint: str = Field(
        default="camenduru/improved-aesthetic-predictor/sac+logos+ava1-l14-linearMSE.pth", min_length=1
    )
    aesthetic_clip: str = Field(default="openai/clip-vit-large-patch14", min_length=1)

    @field_validator("metrics")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class Settings(Section):
    providers: ProvidersConfig = Field(default_factory=ProvidersConfig)
    criticore: CriticoreConfig = Field(default_factory=CriticoreConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    specfusion: SpecFusionConfig = Field(default_factory=SpecFusionConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tui: TuiConfig = Field(default_factory=TuiConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


@dataclass
class LoadedConfig:
    """The settings, and where they came from (doctor and the manifest say so)."""

    settings: Settings
    path: Path | None
    source: str
    overrides: list[str] = field(default_factory=list)


def user_config_path() -> Path:
    from platformdirs import user_config_dir

    return Path(user_config_dir("critifusion")) / CONFIG_NAME


def find_config(explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The file to read and why it was chosen, in the documented lookup order."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (given with --config)")
        return path, "--config"
    env = os.environ.get(ENV_CONFIG)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file (named by ${ENV_CONFIG})")
        return path, f"${ENV_CONFIG}"
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local, "current directory"
    user = user_config_path()
    if user.is_file():
        return user, "user config directory"
    return None, "built-in defaults"


def load_config(explicit: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    """Find, read and validate the configuration; apply ``--set`` overrides."""
    path, source = find_config(explicit)
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is fine
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        data = parse_toml(text, str(path))
    _refuse_secrets(data, str(path), text)
    for item in overrides:
        apply_override(data, item)
    where = str(path) if path else "built-in defaults"
    settings = validate(data, where, text, overrides)
    read_instruction_files(settings, path.parent if path else Path.cwd(), where, text, overrides)
    return LoadedConfig(settings, path, source, list(overrides))


def read_instruction_files(
    settings: Settings, base: Path, where: str, text: str = "", overrides: list[str] | tuple[str, ...] = ()
) -> None:
    """Replace each ``[criticore.instructions]`` value that names a file by the file's text.

    A relative path is read from the config file's folder (from the current folder for a
    ``--set``). A missing or empty file, or an unknown placeholder in it, is a ConfigError
    naming the file, and for a placeholder the line inside it. Once read, the text is what the
    settings (and so the manifest's config) hold: a resumed run needs no file.
    """
    section = settings.criticore.instructions
    for name in _ins.NAMES:
        value = getattr(section, name)
        if not _ins.is_template_path(value):
            continue
        dotted = f"criticore.instructions.{name}"
        origin = _origin(dotted, where, text, overrides)
        path = Path(value.strip()).expanduser()
        if not path.is_absolute():
            path = (Path.cwd() if origin.startswith("--set") else base) / path
        try:
            template = _ins.read_template_file(path)
        except _ins.InstructionError as exc:
            raise ConfigError(f"{origin}: {dotted}: {exc}") from None
        unknown = _ins.unknown_placeholders(name, template)
        if unknown:
            line = _ins.line_of_placeholder(template, unknown[0])
            raise ConfigError(
                f"{path}:{line}: unknown placeholder {{{unknown[0]}}} in instruction {name!r}"
                f" (read for {dotted}, {origin}); placeholders it may use:"
                f" {_ins.allowed_placeholders(name)}"
            )
        setattr(section, name, template)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise ConfigError(f"{where}: TOML nested too deeply to be a configuration") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib words it as "Expected ... (at line 3, column 7)": lead with the line.
        msg = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if match:
            reason = msg[: match.start()].strip()
            raise ConfigError(
                f"{where}:{match.group(1)}: TOML syntax error at column {match.group(2)}: {reason}"
            ) from None
        raise ConfigError(f"{where}: TOML syntax error: {msg}") from None


def _refuse_secrets(data: dict[str, Any], where: str, text: str, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            _refuse_secrets(value, where, text, f"{dotted}.")
        elif key.lower() in SECRET_KEYS:
            line = _line_of(text, dotted)
            env_hint = data.get("api_key_env") or "the variable api_key_env names"
            raise ConfigError(
                f"{where}{f':{line}' if line else ''}: {dotted}: a literal secret is refused in a"
                f" config file; export it as an environment variable ({env_hint}) instead"
            )


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value``; the value is read as TOML, else taken as a string."""
    dotted, sep, raw = item.partition("=")
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. diffusion.steps=30")
    if parts[-1].lower() in SECRET_KEYS:
        raise ConfigError(f"--set {dotted}: secrets are read from environment variables only")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except RecursionError:
        raise ConfigError(f"--set {dotted}: the value is nested too deeply") from None
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as tiny-random or ollama:llava
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def validate(data: dict[str, Any], where: str, text: str = "", overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, where, text, overrides)) from None


def _describe(exc: ValidationError, where: str, text: str, overrides) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        index = next((p for p in err["loc"] if isinstance(p, int)), None)
        dotted = ".".join(loc)
        origin = _origin(dotted, where, text, overrides)
        if err["type"] == "extra_forbidden":
            known = _known_keys(loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"{origin}: unknown key {dotted!r}{hint}; known keys here: {', '.join(known)}")
            continue
        message = err["msg"].removeprefix("Value error, ")
        item = f" item {index + 1}" if index is not None else ""
        got = err.get("input")
        # A template's text is long and already placed by its line: not repeated.
        shown = "" if isinstance(got, dict) or dotted.startswith("criticore.instructions.") else f" (got {got!r})"
        lines.append(f"{origin}: {dotted}{item}: {message}{shown}")
    return "\n".join(lines)


def _origin(dotted: str, where: str, text: str, overrides) -> str:
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == dotted or key.startswith(f"{dotted}."):
            return f"--set {item}"
    line = _line_of(text, dotted)
    return f"{where}:{line}" if line else where


def _known_keys(section: list[str]) -> list[str]:
    model: type[BaseModel] = Settings
    for name in section:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _line_of(text: str, dotted: str) -> int | None:
    """The line where ``section.key`` is set, found by reading headers and assignments."""
    *section, key = dotted.split(".")
    current: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\]]+?)\s*\]\s*(#.*)?", stripped)
        if header:
            current = [p.strip().strip('"') for p in header.group(1).split(".")]
            if current == section + [key]:
                return number
            continue
        assign = re.match(r'"?([A-Za-z0-9_\-]+)"?\s*=', stripped)
        if assign and current == section and assign.group(1) == key:
            return number
    return None


def settings_for_manifest(settings: Settings) -> dict[str, Any]:
    """The settings as plain data. Holds no secret: keys live only in the environment, and
    provider URLs are recorded without their user info (``user:password@``)."""
    from critifusion_tui.redact import strip_userinfo

    data = settings.model_dump(mode="json")
    providers = data.get("providers", {})
    for section, key in (("together", "base_url"), ("ollama", "host"), ("openai", "base_url")):
        if isinstance(providers.get(section, {}).get(key), str):
            providers[section][key] = strip_userinfo(providers[section][key])
    return data
