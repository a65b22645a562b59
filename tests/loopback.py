"""A scriptable loopback HTTP server that speaks the Together, Ollama and OpenAI endpoints.

Tests point the real ``together``, ``ollama`` and ``openai`` clients at it
(``base_url=server.url``, ``host=server.url``, ``base_url=server.openai_url``), script what
each model answers, and read back every request::

    with LoopbackServer() as server:
        server.script("model-a", text="hello", delay=0.5)
        server.script("model-b", status=429, retry_after=0.05, times=1)  # then the default
        server.script("model-c", hang=True)                              # never answers
        server.add_model("llava", vision=True)                           # listed, shown
        ...
        body = server.last("/v1/chat/completions").body

Endpoints: ``POST /v1/chat/completions`` (JSON, or SSE with ``data: ...`` lines and
``data: [DONE]`` when the body asks ``stream``), ``GET /v1/models``, ``GET /v2/supported-models``,
``POST /api/chat`` (JSON or NDJSON), ``GET /api/tags``, ``POST /api/show``, ``GET /api/ps``
(the models a chat loaded, as Ollama holds them in memory), ``POST /api/generate`` (with no
prompt and ``keep_alive: 0`` it unloads the model, as Ollama does; else it answers), and under
``/openai/v1`` an OpenAI-compatible server (``chat/completions`` as above, ``models`` as
OpenAI's ``{"object": "list", "data": [...]}``). Answers carry token usage as each service
reports it: ``usage`` in a completion, in Together's last stream chunk, in an extra last chunk
on the OpenAI path when the request asks ``stream_options.include_usage``, and Ollama's
``prompt_eval_count``/``eval_count`` in its last part. With ``refuse_schema`` set, a chat that asks
for constrained output (``response_format`` json_schema, Ollama's ``format``) gets HTTP 400,
as servers without that feature answer. It binds
127.0.0.1 on a free port and runs each connection in its own thread, so concurrent calls
overlap the way they would against a real service.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HANG_LIMIT_S = 30.0  # a hang ends at this, or when the server stops, whichever is first


@dataclass
class Script:
    """What one model does for one or more requests."""

    text: str | None = None  # the answer; None: "reply from <model>"
    chunks: list[str] | None = None  # streamed deltas; None: ``text`` in 3-character pieces
    delay: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # seconds between streamed deltas
    status: int | None = None  # answer this HTTP status with an error body instead
    error: str | None = None  # the error's message (a default per status otherwise)
    error_code: str | None = None  # Together's ``error.code`` field
    retry_after: float | None = None  # sent as the Retry-After header (with ``status``)
    hang: bool = False  # never answer (until the client gives up or the server stops)
    garbage: str | None = None  # 200 with this body (or SSE event / NDJSON line) instead of JSON
    times: int | None = None  # used for this many requests, then the next script; None: always
    # Only requests whose JSON body holds this text take the script (and count towards
    # ``times``); the others get the default answer. Lets a test fail one stage's request of a
    # model that answers several stages at once, whatever order they arrive in. Several
    # ``when`` scripts at the front of a queue are each matched on their own text.
    when: str | None = None
    # (prompt tokens, completion tokens) the answer reports as its usage; None: 7 and the
    # answer's word count. ``usage=False``: no usage at all (a server that reports none).
    usage: tuple[int, int] | bool | None = None

    def tokens(self, text: str) -> tuple[int, int] | None:
        if self.usage is False:
            return None
        if isinstance(self.usage, tuple):
            return self.usage
        return 7, max(1, len(text.split()))

    # Echo the request's Authorization header back in an error: with ``status``, in the
    # error body; without, as an error event after the first streamed pieces (hostile or
    # careless servers do both).
    echo_auth: bool = False

    def pieces(self, text: str) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return [text[i : i + 3] for i in range(0, len(text), 3)] or [""]


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None
    raw: bytes
    at: float = field(default_factory=time.perf_counter)


@dataclass
class ModelEntry:
    name: str
    vision: bool = False


class LoopbackServer:
    """The server; a context manager (``with LoopbackServer() as server``) or start/stop."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.models: dict[str, ModelEntry] = {}
        # The Ollama models "in memory": loaded by a chat, unloaded by keep_alive 0 (/api/ps).
        self.loaded: list[str] = []
        # False: /v2/supported-models answers 404 (an older or compatible server).
        self.supported_models = True
        # True: a chat asking for constrained output is refused with 400 (an older server).
        self.refuse_schema = False
        # True: an OpenAI-path chat that asks ``stream_options`` gets 400 (servers without it).
        self.refuse_stream_options = False
        self._scripts: dict[str, deque[Script]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LoopbackServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.loopback = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes every delay and hang at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not running"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """The base URL an OpenAI-compatible client takes (with its /v1)."""
        return f"{self.url}/openai/v1"

    # -- scripting --------------------------------------------------------------------------

    def script(self, model: str, **fields: Any) -> Script:
        """Queue a behaviour for ``model``; see :class:`Script` for the fields."""
        entry = Script(**fields)
        with self._lock:
            self._scripts[model].append(entry)
        return entry

    def add_model(self, name: str, *, vision: bool = False) -> None:
        """List ``name`` in /v1/models, /v2/supported-models, /api/tags; /api/show knows it."""
        self.models[name] = ModelEntry(name, vision)

    def next_script(self, model: str, body: dict | None = None) -> Script:
        """The script a request takes: the first one queued, or, while the queue starts with
        ``when`` scripts, the first of those whose text the request holds (so requests that
        arrive in any order, each about its own image, each get their own answer)."""
        with self._lock:
            queue = self._scripts.get(model)
            if not queue:
                return Script()
            text = json.dumps(body or {})
            found = None
            for index, entry in enumerate(queue):
                if entry.when is None:
                    found = 0 if index == 0 else None
                    break
                if entry.when in text:
                    found = index
                    break
            if found is None:
                return Script()
            current = queue[found]
            if current.times is not None:
                current.times -= 1
                if current.times <= 0:
                    del queue[found]
            return current

    # -- reading back -----------------------------------------------------------------------

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def last(self, path: str | None = None) -> Recorded:
        found = self.requests_to(path) if path else list(self.requests)
        assert found, f"no request to {path or 'any path'} was recorded"
        return found[-1]

    def record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    def wait(self, seconds: float) -> bool:
        """Sleep, unless the server stops first; True when it is stopping."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connecting is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must not hold up the end of a test
    # Stages 1 and 2 together open 10 connections at once; socketserver's backlog of 5 lets
    # the kernel drop a SYN, and the client's retransmit then costs exactly 1 s.
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client closing its idle keep-alive connection (or giving up) is routine here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, as real services do
    timeout = 15  # an idle keep-alive connection's thread ends after this

    server: ThreadingHTTPServer

    @property
    def loopback(self) -> LoopbackServer:
        return self.server.loopback  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    # -- dispatch ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.loopback.record(
            Recorded(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                body,
                raw,
            )
        )
        route = {
            ("POST", "/v1/chat/completions"): self._together_chat,
            ("GET", "/v1/models"): self._together_models,
            ("GET", "/v2/supported-models"): self._together_supported,
            ("POST", "/api/chat"): self._ollama_chat,
            ("GET", "/api/tags"): self._ollama_tags,
            ("POST", "/api/show"): self._ollama_show,
            ("GET", "/api/ps"): self._ollama_ps,
            ("POST", "/api/generate"): self._ollama_generate,
            ("POST", "/openai/v1/chat/completions"): self._together_chat,
            ("GET", "/openai/v1/models"): self._openai_models,
        }.get((self.command, parts.path))
        try:
            if route is None:
                self._json(404, {"error": f"no route {self.command} {parts.path}"})
            else:
                route(body or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test): nothing left to tell it

    # -- Together ---------------------------------------------------------------------------

    def _together_chat(self, body: dict) -> None:
        model = str(body.get("model", ""))
        if self.loopback.refuse_schema and "response_format" in body:
            message = "response_format json_schema is not supported by this server"
            self._json(400, {"error": {"message": message, "type": "invalid_request_error"}})
            return
        script = self._begin(model, body)
        if script is None:
            return
        if script.status is not None:
            self._fault(script, together=True)
            return
        text = script.text if script.text is not None else f"reply from {model}"
        tokens = script.tokens(text)
        openai_path = self.path.startswith("/openai/")
        if openai_path and self.loopback.refuse_stream_options and "stream_options" in body:
            self._json(400, {"error": {"message": "stream_options is not supported", "type": "invalid_request_error"}})
            return
        if not body.get("stream"):
            if script.garbage is not None:
                self._raw(200, script.garbage.encode(), "application/json")
                return
            self._json(200, _completion(model, text, tokens))
            return
        self._start_chunked("text/event-stream")
        for index, piece in enumerate(script.pieces(text)):
            if index and self.loopback.wait(script.chunk_delay):
                return
            self._chunk(f"data: {json.dumps(_completion_chunk(model, piece))}\n\n")
            if script.echo_auth:
                error = {"error": {"message": f"stream failed; {self._echo()}", "type": "server_error"}}
                self._chunk(f"data: {json.dumps(error)}\n\n")
                self._end_chunked()
                return
        if script.garbage is not None:
            self._chunk(f"data: {script.garbage}\n\n")
        last = _completion_chunk(model, "", finish="stop")
        if not openai_path and tokens:  # Together puts the usage on the last chunk
            last["usage"] = _usage(tokens)
        self._chunk(f"data: {json.dumps(last)}\n\n")
        if openai_path and tokens and (body.get("stream_options") or {}).get("include_usage"):
            # OpenAI's way: one more chunk with no choices, only the usage.
            self._chunk(
                f"data: {json.dumps({**_completion_chunk(model, ''), 'choices': [], 'usage': _usage(tokens)})}\n\n"
            )
        self._chunk("data: [DONE]\n\n")
        self._end_chunked()

    def _openai_models(self, body: dict) -> None:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "loopback"} for m in self.loopback.models]
        self._json(200, {"object": "list", "data": data})

    def _together_models(self, body: dict) -> None:
        # The real /v1/models answers a bare list of model objects.
        self._json(200, [{"id": m, "object": "model", "type": "chat"} for m in self.loopback.models])

    def _together_supported(self, body: dict) -> None:
        if not self.loopback.supported_models:
            self._json(404, {"error": {"message": "Not found", "type": "not_found"}})
            return
        data = [
            {"id": f"sm-{i}", "name": m, "serverlessEndpoint": m, "products": ["PRODUCT_SERVERLESS"]}
            for i, m in enumerate(self.loopback.models)
        ]
        self._json(200, {"data": data, "nextCursor": None})

    # -- Ollama -----------------------------------------------------------------------------

    def _ollama_chat(self, body: dict) -> None:
        model = str(body.get("model", ""))
        if self.loopback.refuse_schema and isinstance(body.get("format"), dict):
            self._json(400, {"error": "invalid format: json schema is not supported"})
            return
        self._ollama_load(model, body.get("keep_alive"))
        script = self._begin(model, body)
        if script is None:
            return
        if script.status is not None:
            self._fault(script, together=False)
            return
        text = script.text if script.text is not None else f"reply from {model}"
        tokens = script.tokens(text)
        if body.get("stream") is False:
            if script.garbage is not None:
                self._raw(200, script.garbage.encode(), "application/json")
                return
            self._json(200, _ollama_part(model, text, done=True, tokens=tokens))
            return
        # Ollama streams unless the body says ``"stream": false``.
        self._start_chunked("application/x-ndjson")
        for index, piece in enumerate(script.pieces(text)):
            if index and self.loopback.wait(script.chunk_delay):
                return
            self._chunk(json.dumps(_ollama_part(model, piece, done=False)) + "\n")
            if script.echo_auth:
                self._chunk(json.dumps({"error": f"stream failed; {self._echo()}"}) + "\n")
                self._end_chunked()
                return
        if script.garbage is not None:
            self._chunk(script.garbage + "\n")
        self._chunk(json.dumps(_ollama_part(model, "", done=True, tokens=tokens)) + "\n")
        self._end_chunked()

    def _ollama_load(self, model: str, keep_alive: Any) -> None:
        with self.loopback._lock:
            if model in self.loopback.loaded:
                self.loopback.loaded.remove(model)
            if keep_alive not in (0, "0", "0s"):
                self.loopback.loaded.append(model)

    def _ollama_ps(self, body: dict) -> None:
        with self.loopback._lock:
            loaded = list(self.loopback.loaded)
        models = [
            {
                "name": m,
                "model": m,
                "size": 2**30,
                "size_vram": 2**30,
                "digest": "0" * 12,
                "expires_at": "2025-01-01T00:05:00Z",
                "details": {"format": "gguf", "family": "test"},
            }
            for m in loaded
        ]
        self._json(200, {"models": models})

    def _ollama_generate(self, body: dict) -> None:
        model = str(body.get("model", ""))
        self._ollama_load(model, body.get("keep_alive"))
        if not body.get("prompt"):  # load or unload only, as Ollama answers it
            reason = "unload" if body.get("keep_alive") in (0, "0", "0s") else "load"
            self._json(
                200,
                {
                    "model": model,
                    "created_at": "2025-01-01T00:00:00Z",
                    "response": "",
                    "done": True,
                    "done_reason": reason,
                },
            )
            return
        script = self._begin(model, body)
        if script is None:
            return
        if script.status is not None:
            self._fault(script, together=False)
            return
        text = script.text if script.text is not None else f"reply from {model}"
        self._json(
            200,
            {
                "model": model,
                "created_at": "2025-01-01T00:00:00Z",
                "response": text,
                "done": True,
                "done_reason": "stop",
            },
        )

    def _ollama_tags(self, body: dict) -> None:
        models = [
            {
                "name": m,
                "model": m,
                "modified_at": "2025-01-01T00:00:00Z",
                "size": 1,
                "digest": "0" * 12,
                "details": {"format": "gguf", "family": "test"},
            }
            for m in self.loopback.models
        ]
        self._json(200, {"models": models})

    def _ollama_show(self, body: dict) -> None:
        name = str(body.get("model", ""))
        entry = self.loopback.models.get(name) or self.loopback.models.get(f"{name}:latest")
        if entry is None:
            self._json(404, {"error": f"model '{name}' not found"})
            return
        capabilities = ["completion", "vision"] if entry.vision else ["completion"]
        # The client fails to parse a reply without ``model_info``; null is enough.
        self._json(200, {"model_info": None, "capabilities": capabilities, "details": {}})

    # -- behaviours -------------------------------------------------------------------------

    def _begin(self, model: str, body: dict) -> Script | None:
        """Apply the script's delay or hang; None when the request is to go unanswered."""
        script = self.loopback.next_script(model, body)
        if script.hang:
            self.loopback.wait(HANG_LIMIT_S)
            self.close_connection = True
            return None
        if self.loopback.wait(script.delay):
            self.close_connection = True
            return None
        return script

    def _echo(self) -> str:
        return f"request had Authorization: {self.headers.get('Authorization', '(none)')}"

    def _fault(self, script: Script, *, together: bool) -> None:
        status = script.status or 500
        message = script.error or _DEFAULT_ERRORS.get(status, f"scripted failure {status}")
        if script.echo_auth:
            message = f"{message}; {self._echo()}"
        if together:
            error: dict[str, Any] = {"message": message, "type": "scripted_error"}
            if script.error_code:
                error["code"] = script.error_code
            payload: Any = {"error": error}
        else:
            payload = {"error": message}
        headers = {}
        if script.retry_after is not None:
            headers["Retry-After"] = f"{script.retry_after:g}"
        self._json(status, payload, headers)

    # -- writing ----------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), "application/json", headers)

    def _raw(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


_DEFAULT_ERRORS = {
    400: "bad request",
    401: "Invalid API key provided",
    403: "forbidden",
    404: "model not found",
    429: "rate limit exceeded",
    500: "internal server error",
    503: "service unavailable",
}


def _usage(tokens: tuple[int, int]) -> dict:
    return {"prompt_tokens": tokens[0], "completion_tokens": tokens[1], "total_tokens": sum(tokens)}


def _completion(model: str, text: str, tokens: tuple[int, int] | None = (1, 1)) -> dict:
    return {
        "id": "cmpl-loopback",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        **({"usage": _usage(tokens)} if tokens else {}),
    }


def _completion_chunk(model: str, piece: str, finish: str | None = None) -> dict:
    return {
        "id": "cmpl-loopback",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": finish}],
    }


def _ollama_part(model: str, piece: str, *, done: bool, tokens: tuple[int, int] | None = None) -> dict:
    part: dict[str, Any] = {
        "model": model,
        "created_at": "2025-01-01T00:00:00Z",
        "message": {"role": "assistant", "content": piece},
        "done": done,
    }
    if done:
        part["done_reason"] = "stop"
        if tokens:
            part["prompt_eval_count"], part["eval_count"] = tokens
    return part


# Shared test data: a key variable of the tests' own naming, and a tiny PNG.
KEY_VAR = "CRITIFUSION_TEST_TOGETHER_KEY"
KEY_VALUE = "sk-loopback-secret-4242"
# A 1x1 PNG: the bytes CritiCore would send for a base image.
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5b1b6"
    "a30000000049454e44ae426082"
)
