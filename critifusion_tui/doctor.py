"""`critifusion doctor`: a truthful report of what this machine and configuration can do.

Each check is one line: a mark, a label, and what was found. Problems a user must fix are
marked `fail` and make the exit status 1; things that work but deserve a look are `warn`.
Nothing here prints a secret: key variables are reported as set or unset, never shown.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from critifusion_tui.providers.base import ModelRef

MARKS = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "info": "    "}


@dataclass
class Check:
    label: str
    status: str  # ok, warn, fail, info
    detail: str


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def system_checks() -> list[Check]:
    from critifusion_tui import __version__

    checks = [
        Check("critifusion-tui", "info", __version__),
        Check("python", "ok", f"{platform.python_version()} ({sys.executable})"),
        Check("platform", "info", f"{platform.system()} {platform.release()} {platform.machine()}"),
    ]
    for dist in ("diffusers", "transformers", "textual", "textual-image", "together", "ollama", "openai"):
        version = _version(dist)
        checks.append(Check(dist, "ok" if version else "fail", version or "not installed"))
    return checks


def torch_checks() -> list[Check]:
    started = time.perf_counter()
    try:
        import torch
    except Exception as exc:  # a broken wheel raises more than ImportError
        return [Check("torch", "fail", f"cannot import: {exc}")]
    took = time.perf_counter() - started
    checks = [Check("torch", "ok", f"{torch.__version__} (import {took:.1f} s)")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            name = torch.cuda.get_device_name(index)
            free, total = torch.cuda.mem_get_info(index)
            checks.append(
                Check(f"cuda:{index}", "ok", f"{name}, {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
            )
    else:
        built = torch.version.cuda
        why = f"torch built for CUDA {built}, but no GPU is visible" if built else "CPU-only torch build"
        checks.append(Check("cuda", "warn", f"not available ({why}); SDXL at 1024 px is very slow on CPU"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        checks.append(Check("mps", "ok", "Apple Metal available"))
    return checks


def config_checks(config_path, overrides):
    """The config in use and its problems; on error, the rest of the report uses defaults."""
    from critifusion_tui.config import ConfigError, Settings, find_config, load_config

    try:
        loaded = load_config(config_path, overrides)
    except ConfigError as exc:
        try:
            path, source = find_config(config_path)
            where = f"{path} ({source})" if path else source
        except ConfigError:
            where = str(config_path or os.environ.get("CRITIFUSION_CONFIG"))
        checks = [Check("config", "fail", where)]
        checks += [Check("", "fail", line) for line in str(exc).splitlines()]
        checks.append(Check("", "info", "the checks below use the built-in defaults"))
        return checks, Settings()
    where = f"{loaded.path} ({loaded.source})" if loaded.path else loaded.source
    checks = [Check("config", "ok", where)]
    checks += [Check("", "info", f"--set {item}") for item in loaded.overrides]
    checks.append(instructions_check(loaded.settings))
    return checks, loaded.settings


def instructions_check(settings) -> Check:
    """The instructions' style and the templates the config overrides (files already read)."""
    from critifusion_tui.instructions import InstructionError, Instructions

    try:
        instructions = Instructions.from_config(settings.criticore.instructions)
    except InstructionError as exc:
        return Check("instructions", "fail", str(exc))
    return Check("instructions", "info", instructions.describe())


def role_checks(settings) -> list[Check]:
    """Each role's models, then what each provider in use needs: a key, or a server."""
    together = settings.providers.together
    ollama = settings.providers.ollama
    checks = []
    users: dict[str, list[str]] = {}
    for role, refs in settings.criticore.refs().items():
        checks.append(Check(role, "info", ", ".join(str(ref) for ref in refs)))
        for ref in refs:
            users.setdefault(ref.provider, []).append(role)
    if "together" in users:
        needed = f"needed by {len(users['together'])} model(s) in {', '.join(dict.fromkeys(users['together']))}"
        if os.environ.get(together.api_key_env):
            checks.append(Check("together key", "ok", f"${together.api_key_env} is set ({needed})"))
        else:
            checks.append(
                Check(
                    "together key", "fail", f"${together.api_key_env} is not set ({needed}); export your Together key"
                )
            )
    if "ollama" in users:
        checks.append(Check("ollama", "info", f"server {ollama.host} (no key needed)"))
    if "openai" in users:
        openai_cfg = settings.providers.openai
        if not openai_cfg.api_key_env:
            checks.append(Check("openai", "info", f"server {openai_cfg.base_url} (no key configured)"))
        elif os.environ.get(openai_cfg.api_key_env):
            checks.append(Check("openai key", "ok", f"${openai_cfg.api_key_env} is set (server {openai_cfg.base_url})"))
        else:
            checks.append(Check("openai key", "fail", f"${openai_cfg.api_key_env} is not set; export the server's key"))
    if "rules" in users:
        checks.append(Check("rules", "info", "offline rules: preset tags, prompt clauses, no-op critic"))
    return checks


# Doctor must never hang on a slow or silent service: each request gets the configured
# timeout_s, but at most this long, and no retries (a re-run of doctor is the retry).
PROVIDER_TIMEOUT_CAP_S = 10.0

# A provider job's result: (position in the config, line); position -1 is a provider line.
Placed = tuple[int, Check]


def provider_checks(settings, offline: bool = False) -> list[Check]:
    """Whether each role's models are available where its provider serves them.

    Together: the serverless catalogue (the 3.x client's list, or GET /v1/models), checked only
    with a key and never with ``offline``. Ollama: /api/tags, and /api/show for a VLM's
    "vision" capability; a local server counts as offline-capable, so it is checked always.
    OpenAI-compatible: the server's own GET /v1/models (not Together's catalogue), checked
    always (usually a local server) unless its key variable is named and unset.
    Each list is fetched once, both providers concurrently, in one event loop.
    """
    # (position, role, ref): lines come out in the config's order, whichever answers first.
    wanted: dict[str, list[tuple[int, str, ModelRef]]] = {"together": [], "ollama": [], "openai": []}
    position = 0
    for role, refs in settings.criticore.refs().items():
        for ref in dict.fromkeys(refs):  # a ref listed twice in one role: one line
            if ref.provider in wanted:
                wanted[ref.provider].append((position, role, ref))
                position += 1
    if not any(wanted.values()):
        return []
    together = settings.providers.together
    key = os.environ.get(together.api_key_env) or ""
    jobs = []
    skipped: list[Check] = []
    if wanted["ollama"]:
        jobs.append(_ollama_checks(settings.providers.ollama, wanted["ollama"]))
    openai_cfg = settings.providers.openai
    if wanted["openai"]:
        if openai_cfg.api_key_env and not os.environ.get(openai_cfg.api_key_env):
            skipped.append(Check("openai", "info", "model list not checked: no key"))
        else:
            jobs.append(_openai_checks(openai_cfg, wanted["openai"]))
    if wanted["together"]:
        if offline:
            skipped.append(Check("together", "info", "catalogue not checked: --offline skips hosted checks"))
        elif not key:
            skipped.append(Check("together", "info", "catalogue not checked: no key"))
        else:
            jobs.append(_together_checks(together, wanted["together"]))

    async def run_all() -> list[list[Placed]]:
        return list(await asyncio.gather(*jobs))

    found: list[Placed] = [(-1, check) for check in skipped]
    if jobs:
        for part in asyncio.run(run_all()):
            found += part
    # Provider lines (position -1) first, then one line per model in config order.
    checks = [check for _, check in sorted(found, key=lambda item: item[0])]
    secrets = [key.strip(), os.environ.get(openai_cfg.api_key_env, "").strip() if openai_cfg.api_key_env else ""]
    for secret in filter(None, secrets):
        # Belt and braces: no server's error text may carry a key into the report.
        for check in checks:
            check.detail = check.detail.replace(secret, "***")
    return checks


def outside_names(names) -> list[str]:
    """Model names from a server's catalogue, cleaned of escapes and control characters (a
    hostile catalogue must not retitle the window or write the clipboard) and kept short."""
    from critifusion_tui.providers.hygiene import clean_outside

    return [clean for clean in (clean_outside(name, limit=120) for name in names or []) if clean]


def _capped(config, **extra):
    return config.model_copy(update={"timeout_s": min(config.timeout_s, PROVIDER_TIMEOUT_CAP_S), **extra})


def _error_detail(error) -> str:
    """A ProviderError as one line: what went wrong and what to do, never a traceback."""
    return f"{error.message}; {error.fix}" if error.fix else error.message


async def _close(provider) -> None:
    try:
        await provider.aclose()
    except Exception:
        pass  # a client that fails to close has nothing to tell the user


async def _together_checks(config, wanted) -> list[Placed]:
    from critifusion_tui.providers.base import (
        ModelNotFoundError,
        ProviderError,
        ProviderTimeoutError,
        closest_names,
    )
    from critifusion_tui.providers.together import MODELS_PAGE, TogetherProvider, api_root

    capped = _capped(config, max_retries=0)
    provider = TogetherProvider(capped)
    deadline = 2 * capped.timeout_s + 1  # the catalogue may take more than one page

    def provider_line(detail: str) -> list[Placed]:
        return [(-1, Check("together", "fail", detail))]

    try:
        available = await asyncio.wait_for(provider.list_models(), deadline)
        available = outside_names(available)  # a catalogue is outside text
    except ModelNotFoundError:
        # Not a model's 404: the catalogue itself is missing, so the URL is the suspect.
        where = api_root(config.base_url) or "api.together.ai"
        return provider_line(f"catalogue not found at {where} (HTTP 404); check providers.together.base_url")
    except (ProviderTimeoutError, asyncio.TimeoutError) as error:
        # Doctor's own cut-off, not the configured timeout: say so rather than "raise timeout_s".
        waited = capped.timeout_s if isinstance(error, ProviderTimeoutError) else deadline
        where = api_root(config.base_url) or "api.together.ai"
        return provider_line(f"catalogue not checked: no answer from {where} within {waited:g} s; try again")
    except ProviderError as error:
        return provider_line(f"catalogue not checked: {_error_detail(error)}")
    except Exception as error:  # whatever the mapping missed is still one line, no traceback
        return provider_line(f"catalogue not checked: {type(error).__name__}: {error}")
    finally:
        await _close(provider)
    names = set(available)
    placed: list[Placed] = []
    for pos, role, ref in wanted:
        if ref.name in names:
            placed.append((pos, Check(role, "ok", f"{ref} available")))
            continue
        close = closest_names(ref.name, available)
        hint = f"closest: {', '.join(close)}" if close else f"no close names; see {MODELS_PAGE}"
        placed.append((pos, Check(role, "fail", f"{ref} not available on Together; {hint}")))
    return placed


async def _openai_checks(config, wanted) -> list[Placed]:
    """An OpenAI-compatible server: its own /v1/models, and the closest names of a missing one."""
    from critifusion_tui.providers.base import ProviderError, ProviderTimeoutError, closest_names
    from critifusion_tui.providers.openai import OpenAIProvider

    capped = _capped(config, max_retries=0)
    provider = OpenAIProvider(capped)
    where = config.base_url

    def provider_line(detail: str) -> list[Placed]:
        return [(-1, Check("openai", "fail", detail))]

    try:
        available = await asyncio.wait_for(provider.list_models(), capped.timeout_s + 1)
        available = outside_names(available)  # a catalogue is outside text
    except (ProviderTimeoutError, asyncio.TimeoutError):
        return provider_line(f"{where} does not answer within {capped.timeout_s:g} s: is the server running?")
    except ProviderError as error:
        return provider_line(f"models not checked at {where}/models: {_error_detail(error)}")
    except Exception as error:  # whatever the mapping missed is still one line, no traceback
        return provider_line(f"models not checked: {type(error).__name__}: {error}")
    finally:
        await _close(provider)
    placed: list[Placed] = []
    for pos, role, ref in wanted:
        if ref.name in available:
            placed.append((pos, Check(role, "ok", f"{ref} available")))
            continue
        close = closest_names(ref.name, available)
        served = f"closest: {', '.join(close)}" if close else f"it serves: {', '.join(available[:5]) or 'no models'}"
        placed.append((pos, Check(role, "fail", f"{ref} not served by {where}; {served}")))
    return placed


async def _ollama_checks(config, wanted) -> list[Placed]:
    from critifusion_tui.providers.base import (
        ModelNotFoundError,
        ProviderConnectionError,
        ProviderError,
        ProviderTimeoutError,
        closest_names,
    )
    from critifusion_tui.providers.ollama import OllamaProvider, model_listed

    capped = _capped(config)
    provider = OllamaProvider(capped)
    host = config.host
    limit = capped.timeout_s + 1

    def provider_line(detail: str) -> list[Placed]:
        return [(-1, Check("ollama", "fail", detail))]

    try:
        try:
            available = await asyncio.wait_for(provider.list_models(), limit)
            available = outside_names(available)  # a catalogue is outside text
        except ProviderConnectionError as error:
            if error.status is not None:  # a 5xx is an answer, in its own words
                return provider_line(_error_detail(error))
            return provider_line(f"Ollama at {host} does not answer: is `ollama serve` running?")
        except (ProviderTimeoutError, asyncio.TimeoutError):
            return provider_line(
                f"Ollama at {host} does not answer within {capped.timeout_s:g} s: is `ollama serve` running?"
            )
        except ModelNotFoundError:
            return provider_line(
                f"{host} answers, but not /api/tags (HTTP 404): is it an Ollama server? check providers.ollama.host"
            )
        except ProviderError as error:
            return provider_line(_error_detail(error))
        except Exception as error:
            return provider_line(f"models not checked: {type(error).__name__}: {error}")

        async def vision(name: str) -> bool | str:
            try:
                return await asyncio.wait_for(provider.has_vision(name), limit)
            except ProviderError as error:
                return _error_detail(error)
            except asyncio.TimeoutError:
                return f"no answer from Ollama within {capped.timeout_s:g} s"
            except Exception as error:
                return f"{type(error).__name__}: {error}"

        # Vision is asked once per distinct pulled VLM, all at once.
        vlms = list(
            dict.fromkeys(ref.name for _, role, ref in wanted if role == "vlms" and model_listed(ref.name, available))
        )
        answers = dict(zip(vlms, await asyncio.gather(*(vision(name) for name in vlms))))
    finally:
        await _close(provider)

    placed: list[Placed] = []
    for pos, role, ref in wanted:
        if not model_listed(ref.name, available):
            close = closest_names(ref.name, available)
            hint = f"; closest: {', '.join(close)}" if close else ""
            check = Check(role, "fail", f"{ref} not pulled; run `ollama pull {ref.name}`{hint}")
        elif role != "vlms":
            check = Check(role, "ok", f"{ref} available")
        elif answers[ref.name] is True:
            check = Check(role, "ok", f"{ref} available (vision)")
        elif answers[ref.name] is False:
            check = Check(role, "fail", f"{ref.name} has no vision capability; pick a vision model such as llava")
        else:
            check = Check(role, "fail", f"{ref} vision not checked: {answers[ref.name]}")
        placed.append((pos, check))
    return placed


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def model_checks(settings) -> list[Check]:
    """What `run` would load, from the very plan `run` uses: configs and file headers only.

    Nothing here downloads or loads weights. "ok" here means `run` loads; a "FAIL" carries the
    same message `run` would stop with.
    """
    from critifusion_tui.engine.diffusion import Diffusion
    from critifusion_tui.engine.diffusion_errors import DiffusionError
    from critifusion_tui.engine.scheduler_plan import scheduler_label

    cfg = settings.diffusion
    try:
        engine = Diffusion.from_config(cfg)
        plan = engine.plan()
    except DiffusionError as exc:
        return [Check("diffusion model", "fail", str(exc))]
    except Exception as exc:  # torch missing or broken: the System section says more
        return [Check("diffusion model", "fail", f"cannot plan the load: {type(exc).__name__}: {exc}")]
    where = {
        "tiny": "built in, offline",
        "folder": f"local diffusers folder {plan.location}",
        "hub": f"{plan.model} in the Hugging Face cache ({plan.location})",
        "download": f"{plan.model} is not in the Hugging Face cache: the first run downloads it (SDXL: ~7 GB)",
        "file": f"single-file checkpoint {plan.location}",
    }[plan.source]
    kind = "SDXL" if plan.kind == "sdxl" else "SD 1.x"
    if plan.tiny:
        checks = [
            Check("diffusion model", "warn", f"{plan.model}: {where}; a tiny random {kind}, its images are noise")
        ]
    else:
        checks = [Check("diffusion model", "warn" if plan.source == "download" else "ok", f"{where} ({kind})")]
    if plan.source in ("folder", "hub"):
        variants = sorted({c.variant or "full" for c in plan.components})
        checks.append(Check("variant", "info", f"{' and '.join(variants)} weights (diffusion.variant = {cfg.variant})"))
    for component in plan.components:
        total = sum(size for _, size in component.files)
        names = ", ".join(Path(p).name for p, _ in component.files[:3])
        more = f" +{len(component.files) - 3} files" if len(component.files) > 3 else ""
        checks.append(Check(component.name, "info", f"{names}{more} ({_size(total)})"))
    if plan.config_source:
        checks.append(Check("config", "info", f"{plan.config_source} ({plan.config_folder})"))
    checks.append(Check("device", "info", f"{plan.device}, {plan.dtype}"))
    checks.append(Check("speed", "info", speed_line(engine, plan)))
    if plan.scheduler:
        checks.append(Check("scheduler", "info", scheduler_label(plan.scheduler)))
    width, height = cfg.size()
    native = f"{plan.native_size[0]}x{plan.native_size[1]}"
    if width is None or height is None:
        size = f"{width or plan.native_size[0]}x{height or plan.native_size[1]} (native size)"
    else:
        size = f"{width}x{height} (the model's native size is {native})"
    checks.append(Check("image size", "info", size))
    checks.extend(Check("note", "info", note) for note in plan.notes)
    return checks


def speed_line(engine, plan) -> str:
    """The speed switches `run` will use on the plan's device and why, and the attention
    kernel torch picks there (asked of torch without loading the model)."""
    from critifusion_tui.engine.devices import resolve_dtype, sdpa_backend

    line = engine.switches().line()
    # SDXL's and SD 1.5's UNets use 64-wide attention heads (10 of them at the first level).
    kernel = sdpa_backend(plan.device, resolve_dtype(plan.dtype, plan.device), heads=10, head_dim=64)
    return f"{line}; attention: torch SDPA, {kernel.replace('_', ' ')} kernel ({plan.device}, {plan.dtype})"


def terminal_checks(settings, probe=None) -> list[Check]:
    """Which inline image protocol the app will use here, and why: the terminal is asked the
    questions the app asks before it starts (critifusion_tui.graphics); `probe` stands in for
    its answers in tests."""
    from critifusion_tui.graphics import decide, probe_terminal, with_environment

    requested = settings.tui.images
    setting = "" if requested == "auto" else f"tui.images = {requested}"
    checks = [
        Check(
            "TERM", "info", f"{os.environ.get('TERM', '(unset)')}" + (" inside tmux" if os.environ.get("TMUX") else "")
        )
    ]
    if probe is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            skipped = "not run in a terminal: detection skipped" + (f" ({setting})" if setting else "")
            return checks + [Check("images", "info", skipped)]
        probe = probe_terminal()
    named = with_environment(probe, os.environ)
    if named.terminal:
        checks.append(Check("terminal", "info", f"{named.who} (named by {named.named_by})"))
    if not probe.answered:
        checks.append(Check("terminal", "warn", f"no answer to the graphics queries: {probe.error}"))
    decision = decide(requested, probe)
    if decision.refused:
        return checks + [
            Check(
                "images",
                "warn",
                f"half-blocks: {setting}, but {decision.refused}; the app falls back to half-blocks "
                f"(--images {requested} refuses to start)",
            )
        ]
    detail = decision.reason if not setting else f"{decision.reason} ({setting})"
    # A warning where the terminal could do better (an old kitty) or did not answer.
    better = decision.mode == "halfblock" and probe.kitty_graphics
    status = "warn" if better or not probe.answered else "ok"
    return checks + [Check("images", status, f"{decision.label}: {detail}")]


def output_checks(settings) -> list[Check]:
    out = settings.output.path()
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if os.access(probe, os.W_OK):
        return [Check("output", "ok", f"{out.resolve()}" + ("" if out.exists() else " (created on first run)"))]
    return [Check("output", "fail", f"{out.resolve()} is not writable")]


def render(sections: list[tuple[str, list[Check]]]) -> str:
    from critifusion_tui.providers.hygiene import clean_outside
    from critifusion_tui.redact import redact

    lines = []
    for title, checks in sections:
        lines.append(title)
        for check in checks:
            detail = redact(clean_outside(check.detail))  # details quote servers: clean and redact
            lines.append(f"  {MARKS[check.status]}  {check.label:<16} {detail}".rstrip())
    return "\n".join(lines)


def run_doctor(config_path=None, overrides=(), offline: bool = False) -> int:
    config, settings = config_checks(config_path, overrides)
    from critifusion_tui.redact import configure

    configure(settings)  # the configured keys' values are masked wherever they would show
    sections = [
        ("System", system_checks() + torch_checks()),
        ("Configuration", config),
        (
            "Models by role" + (" (offline: hosted checks skipped)" if offline else ""),
            role_checks(settings) + provider_checks(settings, offline),
        ),
        ("Diffusion", model_checks(settings)),
        ("Terminal", terminal_checks(settings)),
        ("Output", output_checks(settings)),
    ]
    print(render(sections))
    failed = sum(c.status == "fail" for _, checks in sections for c in checks if c.label)
    print(f"\n{failed} problem(s) found." if failed else "\nAll checks passed.")
    return 1 if failed else 0
