"""`critifusion doctor` asks the providers whether each role's models are really there.

Doctor runs in a subprocess, pointed by ``--set`` at a loopback server in this process
(Together's base_url and Ollama's host alike), its key in a variable of the tests' naming.
"""

from __future__ import annotations

import time

from tests.cli.test_doctor import doctor
from tests.loopback import KEY_VALUE, KEY_VAR, unused_port

TOGETHER_A = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
TOGETHER_B = "Qwen/Qwen2.5-72B-Instruct-Turbo"
TOGETHER_PATHS = ("/v1/models", "/v2/supported-models")


def roles(candidates, aggregator, vlms):
    def toml_list(refs):
        return "[" + ", ".join(f"'{ref}'" for ref in refs) + "]"

    return [
        "--set",
        f"criticore.candidates={toml_list(candidates)}",
        "--set",
        f"criticore.aggregator={toml_list(aggregator)}",
        "--set",
        f"criticore.vlms={toml_list(vlms)}",
    ]


def run(server, *args, env, cwd, ollama_host=None, key=True):
    env = dict(env, **({KEY_VAR: KEY_VALUE} if key else {}))
    proc = doctor(
        "--set",
        f"providers.together.base_url='{server.url}'",
        "--set",
        f"providers.together.api_key_env={KEY_VAR}",
        "--set",
        f"providers.ollama.host='{ollama_host or server.url}'",
        "--set",
        "diffusion.model=tiny-random",
        *args,
        env=env,
        cwd=cwd,
    )
    assert KEY_VALUE not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def lines_with(out: str, text: str) -> list[str]:
    return [line for line in out.splitlines() if text in line]


def full_catalogue(server):
    server.add_model(TOGETHER_A)
    server.add_model(TOGETHER_B)
    server.add_model("llama3.2:latest")
    server.add_model("llava:latest", vision=True)


MIXED_ROLES = roles(
    [f"together:{TOGETHER_A}", f"together:{TOGETHER_B}", "ollama:llama3.2"],
    [f"together:{TOGETHER_B}"],
    ["ollama:llava"],
)


def test_all_models_available_passes_and_fetches_each_list_once(server, env, tmp_path):
    full_catalogue(server)
    proc = run(server, *MIXED_ROLES, env=env, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out
    assert "All checks passed." in out
    assert lines_with(out, f"together:{TOGETHER_A} available")[0].lstrip().startswith("ok")
    # The same model in two roles: a line for each role, from one catalogue fetch.
    assert len(lines_with(out, f"together:{TOGETHER_B} available")) == 2
    assert lines_with(out, "ollama:llama3.2 available")
    assert lines_with(out, "ollama:llava available (vision)")
    assert len(server.requests_to("/v2/supported-models")) == 1
    assert len(server.requests_to("/api/tags")) == 1
    # Only the VLM is asked for its capabilities.
    assert [r.body["model"] for r in server.requests_to("/api/show")] == ["llava"]
    # The per-model lines follow the role lines, in the config's order.
    section = out.split("Models by role", 1)[1].split("Diffusion", 1)[0].splitlines()
    models = [line.split()[1] for line in section if line.endswith("available") or "(vision)" in line]
    assert models == ["candidates", "candidates", "candidates", "aggregator", "vlms"]
    role_line = next(i for i, line in enumerate(section) if line.split()[:1] == ["vlms"])
    assert role_line < next(i for i, line in enumerate(section) if line.endswith("available"))


def test_missing_together_model_names_the_closest(server, env, tmp_path):
    full_catalogue(server)
    server.add_model("Qwen/Qwen2.5-7B-Instruct-Turbo")
    proc = run(
        server,
        *roles(["together:Qwen/Qwen2.5-72B-Instruct"], [f"together:{TOGETHER_B}"], ["rules"]),
        env=env,
        cwd=tmp_path,
    )
    [line] = lines_with(proc.stdout, "not available on Together")
    assert line.lstrip().startswith("FAIL  candidates")
    assert (
        "together:Qwen/Qwen2.5-72B-Instruct not available on Together;"
        f" closest: {TOGETHER_B}, Qwen/Qwen2.5-7B-Instruct-Turbo" in line
    )
    assert proc.returncode == 1 and "1 problem(s) found." in proc.stdout


def test_catalogue_falls_back_to_v1_models(server, env, tmp_path):
    full_catalogue(server)
    server.supported_models = False  # an older or compatible server: 404 there
    proc = run(server, *roles([f"together:{TOGETHER_A}"], ["together:no/such-model"], ["rules"]), env=env, cwd=tmp_path)
    assert lines_with(proc.stdout, f"together:{TOGETHER_A} available")
    assert lines_with(proc.stdout, "together:no/such-model not available on Together")
    assert len(server.requests_to("/v1/models")) == 1 and proc.returncode == 1


def test_missing_ollama_model_says_ollama_pull(server, env, tmp_path):
    full_catalogue(server)
    server.add_model("qwen2.5:7b")
    proc = run(server, *roles(["ollama:qwen2.5", "ollama:llama3.2"], ["rules"], ["rules"]), env=env, cwd=tmp_path)
    [line] = lines_with(proc.stdout, "not pulled")
    assert "ollama:qwen2.5 not pulled; run `ollama pull qwen2.5`; closest: qwen2.5:7b" in line
    assert lines_with(proc.stdout, "ollama:llama3.2 available")  # no tag means :latest
    assert proc.returncode == 1


def test_ollama_vlm_without_vision_fails(server, env, tmp_path):
    full_catalogue(server)
    proc = run(
        server, *roles(["rules"], ["ollama:llama3.2"], ["ollama:llama3.2", "ollama:llava"]), env=env, cwd=tmp_path
    )
    out = proc.stdout
    [line] = lines_with(out, "no vision capability")
    assert line.lstrip().startswith("FAIL  vlms")
    assert "llama3.2 has no vision capability; pick a vision model such as llava" in line
    # As the aggregator the same model needs no vision: that line is fine.
    assert lines_with(out, "aggregator       ollama:llama3.2 available")
    assert lines_with(out, "ollama:llava available (vision)")
    assert proc.returncode == 1 and "1 problem(s) found." in out


def test_ollama_host_down_is_one_line(server, env, tmp_path):
    full_catalogue(server)
    host = f"http://127.0.0.1:{unused_port()}"
    started = time.perf_counter()
    proc = run(
        server,
        *roles(["ollama:llama3.2", "ollama:qwen2.5"], ["ollama:llama3.2"], ["ollama:llava"]),
        env=env,
        cwd=tmp_path,
        ollama_host=host,
    )
    took = time.perf_counter() - started
    out = proc.stdout
    assert lines_with(out, f"Ollama at {host} does not answer: is `ollama serve` running?") == [
        f"  FAIL  ollama           Ollama at {host} does not answer: is `ollama serve` running?"
    ]
    assert not lines_with(out, "not pulled") and not lines_with(out, "ollama:llama3.2 available")
    assert proc.returncode == 1 and "1 problem(s) found." in out
    assert took < 60  # the whole command, torch import included; a refused port costs nothing


def test_offline_skips_together_but_checks_ollama(server, env, tmp_path):
    full_catalogue(server)
    proc = run(server, "--offline", *MIXED_ROLES, env=env, cwd=tmp_path)
    out = proc.stdout
    assert "Models by role (offline: hosted checks skipped)" in out
    assert lines_with(out, "catalogue not checked: --offline skips hosted checks")
    assert not any(server.requests_to(path) for path in TOGETHER_PATHS)
    assert not lines_with(out, f"together:{TOGETHER_A} available")
    assert lines_with(out, "ollama:llama3.2 available")
    assert lines_with(out, "ollama:llava available (vision)")
    assert server.requests_to("/api/tags") and proc.returncode == 0, out


def test_no_key_skips_the_catalogue(server, env, tmp_path):
    full_catalogue(server)
    proc = run(server, *roles([f"together:{TOGETHER_A}"], ["rules"], ["rules"]), env=env, cwd=tmp_path, key=False)
    out = proc.stdout
    assert lines_with(out, f"${KEY_VAR} is not set")
    assert lines_with(out, "catalogue not checked: no key")
    assert not server.requests and proc.returncode == 1
    assert "1 problem(s) found." in out  # the key line, not one more for the catalogue


# --- In process: a server that accepts and never answers must not hang doctor -------------


def silent_listener():
    """A loopback socket that accepts connections (the kernel's backlog) and never answers."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_silent_services_are_cut_off_at_the_cap(monkeypatch):
    import critifusion_tui.doctor as doctor_module
    from critifusion_tui.config import load_config

    monkeypatch.setattr(doctor_module, "PROVIDER_TIMEOUT_CAP_S", 0.5)  # config says 120 and 60
    monkeypatch.setenv(KEY_VAR, KEY_VALUE)
    sock, url = silent_listener()
    with sock:
        settings = load_config(
            None,
            [
                f"providers.together.base_url='{url}'",
                f"providers.together.api_key_env={KEY_VAR}",
                f"providers.ollama.host='{url}'",
                f"criticore.candidates=['together:{TOGETHER_A}', 'ollama:llama3.2']",
                "criticore.aggregator=rules",
                "criticore.vlms=['ollama:llava']",
            ],
        ).settings
        assert settings.providers.ollama.timeout_s == 120
        started = time.perf_counter()
        checks = doctor_module.provider_checks(settings, offline=False)
        took = time.perf_counter() - started
    assert took < 3, took  # both at once, each cut off at the cap
    by_label = {check.label: check for check in checks}
    assert set(by_label) == {"together", "ollama"}  # no per-model lines without the lists
    assert by_label["ollama"].status == "fail"
    assert by_label["ollama"].detail == (f"Ollama at {url} does not answer within 0.5 s: is `ollama serve` running?")
    assert by_label["together"].status == "fail"
    assert by_label["together"].detail == f"catalogue not checked: no answer from {url} within 0.5 s; try again"


def test_offline_with_only_together_models_makes_no_request(server, monkeypatch):
    from critifusion_tui.config import load_config
    from critifusion_tui.doctor import provider_checks

    monkeypatch.setenv(KEY_VAR, KEY_VALUE)
    settings = load_config(
        None,
        [
            f"providers.together.base_url='{server.url}'",
            f"providers.together.api_key_env={KEY_VAR}",
        ],
    ).settings
    checks = provider_checks(settings, offline=True)
    assert [(c.label, c.status) for c in checks] == [("together", "info")]
    assert not server.requests


def test_openai_compatible_server_lists_its_own_models(server, env, tmp_path):
    server.add_model("Qwen/Qwen2.5-0.5B-Instruct")
    server.add_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    proc = run(
        server,
        "--set",
        f"providers.openai.base_url='{server.openai_url}'",
        *roles(["openai:Qwen/Qwen2.5-0.5B-Instruct"], ["openai:HuggingFaceTB/SmolLM2-135M-Instruc"], ["rules"]),
        env=env,
        cwd=tmp_path,
    )
    out = proc.stdout
    assert proc.returncode == 1, out
    assert lines_with(out, "openai:Qwen/Qwen2.5-0.5B-Instruct available")[0].lstrip().startswith("ok")
    (missing,) = lines_with(out, "openai:HuggingFaceTB/SmolLM2-135M-Instruc not served by")
    assert missing.lstrip().startswith("FAIL") and "closest: HuggingFaceTB/SmolLM2-135M-Instruct" in missing
    # The server's own list, not Together's catalogue.
    assert len(server.requests_to("/openai/v1/models")) == 1
    assert not any(server.requests_to(path) for path in TOGETHER_PATHS)


def test_openai_server_down_is_one_line(server, env, tmp_path):
    url = f"http://127.0.0.1:{unused_port()}/v1"
    proc = run(
        server,
        "--set",
        f"providers.openai.base_url='{url}'",
        *roles(["openai:m"], ["rules"], ["rules"]),
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    (line,) = lines_with(proc.stdout, f"cannot reach the server at {url}")
    assert line.lstrip().startswith("FAIL")
