"""The studio's HTTP routes (Starlette): the page, answer sessions streamed token by token, the steer file.

Every request carries the server's random token: the `X-Studio-Token` header (API clients), or the cookie the
page gets when it is opened with `/?token=` (`HttpOnly; SameSite=Strict`, named after the port, so two studios
on one host keep theirs; the page then removes the token from the address bar). A request whose `Origin` is
not the server's own is refused even with the token, and every answer carries a `Content-Security-Policy` of
`default-src 'self'` that also forbids framing, `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.
A server bound to loopback also refuses any `Host` but loopback names (DNS rebinding). Bodies are JSON of at
most `MAX_BODY_BYTES`, texts at most `MAX_TEXT_CHARS`, answers at most the server's token limit; a bad request
gets a 4xx answer `{"error": "..."}` naming the field (with `"confirm": true` when sending it again with
`confirm` would be accepted). The client never names a file: the server writes the one steer file it was
started with.

Stream format (`GET /api/sessions/{id}/segments/{k}/stream?from=i`): one JSON object a line,
`{"type": "token", "index": i, "text": piece}`, `{"type": "suggest", "cut", "chosen", "chosen_complete",
"found", "expected"}` (a task's first mistake), and last `{"type": "end", "complete", "stopped",
"cancelled", "split", "error", "tokens"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from localdpo.steers.preview import steer_view
from localdpo.steers.tokenization import SpanMode, tokenize_steer
from localdpo.studio.errors import StudioError
from localdpo.studio.session import Sampling, Studio, TaskContext, degenerate_warnings, draw_task_prompt
from localdpo.studio.training import (
    HOLD_OUT_FRACTION,
    MAX_STEPS,
    METHOD_HELP,
    METHODS,
    MIN_STEERS,
    Budget,
    hold_out_counts,
)
from localdpo.tasks import known_tasks

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
TOKEN_HEADER = "x-studio-token"
COOKIE_PREFIX = "localdpo_studio_"
OPEN_PATHS = {"/favicon.ico"}
"""Answered without the token (the browser asks for them on its own)."""
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
]
MAX_BODY_BYTES = 256 * 1024
MAX_TEXT_CHARS = 32_000
MAX_TEMPERATURE = 5.0
STREAM_POLL_S = 0.02
TRAINING_POLL_S = 0.5
STATIC_FILES["train.js"] = "text/javascript"


def cookie_name(scope) -> str:
    """The token cookie's name: one per port (cookies do not tell ports apart, studios on one host do)."""
    server = scope.get("server") or ("", 0)
    return f"{COOKIE_PREFIX}{server[1]}"


def _origin_refusal(request: Request) -> str | None:
    """Why a request's `Origin` is refused (another site's page), or None (no Origin, or the server's own)."""
    origin = request.headers.get("origin")
    if origin is None:
        return None
    host = request.headers.get("host", "")
    if origin in (f"http://{host}", f"https://{host}"):
        return None
    return f"requests from another origin ({origin}) are refused"


class Guard:
    """ASGI middleware: the security headers on every answer; 403 to a foreign `Origin` and to any request
    without the server's token (header, cookie, or `?token=` on the page itself)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    def _supplied(self, request: Request) -> str:
        token = request.headers.get(TOKEN_HEADER) or request.cookies.get(cookie_name(request.scope))
        if not token and request.url.path == "/":
            token = request.query_params.get("token")
        return token or ""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        request = Request(scope)
        refusal = _origin_refusal(request)
        token_ok = secrets.compare_digest(self._supplied(request).encode(), self.token.encode())
        if refusal is None and request.url.path not in OPEN_PATHS and not token_ok:
            refusal = "missing or wrong token: open the address `localdpo studio` printed"
        if refusal is not None:
            await JSONResponse({"error": refusal}, status_code=403)(scope, receive, send_secured)
            return
        await self.app(scope, receive, send_secured)


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object body, refused past `MAX_BODY_BYTES` (413) or when not an object (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise StudioError(413, f"request body over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise StudioError(413, f"request body over {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StudioError(400, f"request body is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise StudioError(400, f"request body must be a JSON object, got {type(value).__name__}")
    return value


_MISSING = object()


def field(body: dict, name: str, kind: type, default: Any = _MISSING) -> Any:
    """`body[name]` checked to be of `kind` (bool is not an int; an int is a float); 400 naming the field."""
    if name not in body or body[name] is None:
        if default is _MISSING:
            raise StudioError(400, f"field '{name}' is missing")
        return default
    value = body[name]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise StudioError(400, f"field '{name}': expected {kind.__name__}, got {type(value).__name__}")
    if kind is str and len(value) > MAX_TEXT_CHARS:
        raise StudioError(400, f"field '{name}': {len(value)} characters, at most {MAX_TEXT_CHARS}")
    return value


def in_range(name: str, value, low, high):
    if not low <= value <= high:
        raise StudioError(400, f"field '{name}': {value} is outside [{low}, {high}]")
    return value


class StudioRoutes:
    """The studio's request handlers, one method per route of `create_app`, over one `Studio`; `token` is
    the one the page's cookie is set to."""

    def __init__(self, studio: Studio, token: str):
        self.studio, self.token = studio, token

    async def index(self, request: Request) -> Response:
        page = (STATIC_DIR / "index.html").read_bytes()
        response = Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})
        if request.query_params.get("token"):  # the token travels on in the cookie, not in URLs
            response.set_cookie(
                cookie_name(request.scope), self.token, httponly=True, samesite="strict", path="/"
            )
        return response

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            raise StudioError(404, f"no static file {name!r}")
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name])

    async def favicon(self, request: Request) -> Response:
        return Response((STATIC_DIR / "favicon.svg").read_bytes(), media_type=STATIC_FILES["favicon.svg"])

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model": self.studio.runner.name,
                "steers_file": str(self.studio.store.path),
                "tasks": [{"name": t.name, "description": t.description} for t in known_tasks().values()],
                "span_modes": [mode.value for mode in SpanMode],
                "token_limit": self.studio.token_limit,
                "defaults": dataclasses.asdict(Sampling()),
                "steers": len(await run_in_threadpool(self.studio.store.list)),
                "rejected_by": self.studio.runner.label,
                "round": self.studio.runner.round,
                "start_model": self.studio.start_runner.name,
                "training": self.studio.training is not None,
            }
        )

    def model_json(self) -> dict:
        active = self.studio.runner
        return {
            "model": active.name,
            "rejected_by": active.label,
            "round": active.round,
            "tuned": active is not self.studio.start_runner,
            "start": {"model": self.studio.start_runner.name, "rejected_by": self.studio.start_runner.label},
        }

    def training_of(self) -> Any:
        if self.studio.training is None:
            raise StudioError(404, "training is off in this studio")
        return self.studio.training

    def training_json(self, steers: int) -> dict:
        training = self.training_of()
        train_steers, held_out = hold_out_counts(steers)
        return {
            "methods": [
                {"name": name, "help": METHOD_HELP.get(name, f"localized DPO with the {name[5:]} loss")}
                for name in METHODS
            ],
            "defaults": dataclasses.asdict(Budget()),
            "max_steps": MAX_STEPS,
            "hold_out_fraction": HOLD_OUT_FRACTION,
            "min_steers": MIN_STEERS,
            "steers": steers,
            "train_steers": train_steers,
            "held_out": held_out,
            "runs_dir": str(training.root),
            "runs": training.finished_runs(),
            "current": None if training.current is None else training.current.status(),
            "active": self.model_json(),
        }

    async def training_info(self, request: Request) -> Response:
        self.training_of()
        steers = len(await run_in_threadpool(self.studio.store.list))
        return JSONResponse(await run_in_threadpool(self.training_json, steers))

    async def start_training(self, request: Request) -> Response:
        training = self.training_of()
        body = await read_json(request)
        method = field(body, "method", str)
        defaults = Budget()
        lr = field(body, "lr", float, defaults.lr)
        if not (math.isfinite(lr) and 0 < lr <= 1):
            raise StudioError(400, f"field 'lr': {lr} is outside (0, 1]")
        budget = Budget(
            steps=in_range("steps", field(body, "steps", int, defaults.steps), 1, MAX_STEPS),
            lr=lr,
            batch_size=in_range("batch_size", field(body, "batch_size", int, defaults.batch_size), 1, 64),
        )

        def start():
            data, steers = self.studio.store.snapshot()
            return training.start(method, budget, data, steers).status()

        return JSONResponse(await run_in_threadpool(start))

    async def stop_training(self, request: Request) -> Response:
        run = await run_in_threadpool(self.training_of().stop)
        return JSONResponse(run.status())

    async def training_stream(self, request: Request) -> Response:
        training = self.training_of()
        run = training.current
        if run is None:
            raise StudioError(404, "no training run yet")

        async def events():
            last = None
            while True:
                status = await run_in_threadpool(run.status)
                if status != last:
                    yield json.dumps(status) + "\n"
                    last = status
                if not status["running"]:
                    return
                await asyncio.sleep(TRAINING_POLL_S)

        return StreamingResponse(
            events(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
        )

    async def use_model(self, request: Request) -> Response:
        body = await read_json(request)
        run = field(body, "run", str, None)
        self.training_of()
        await run_in_threadpool(self.studio.use_model, run)
        return JSONResponse(self.model_json())

    async def compare(self, request: Request) -> Response:
        """One prompt, two greedy answers: the start model's and training run `run`'s tuned model's."""
        body = await read_json(request)
        prompt = field(body, "prompt", str)
        if not prompt.strip():
            raise StudioError(400, "field 'prompt' is empty")
        run = field(body, "run", str)
        self.training_of()
        system = field(body, "system", str, "")
        sampling = Sampling(
            max_new_tokens=in_range(
                "max_new_tokens",
                field(body, "max_new_tokens", int, min(Sampling.max_new_tokens, self.studio.token_limit)),
                1,
                self.studio.token_limit,
            )
        )
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": "user", "content": prompt}
        ]
        tuned = await run_in_threadpool(self.studio.tuned_runner, run)
        answers = {}
        for side, runner in (("start", self.studio.start_runner), ("tuned", tuned)):
            session = await run_in_threadpool(self.studio.open, messages, sampling, None, runner)
            answers[side] = {
                "session": session.id,
                "segment": 0,
                "model": runner.name,
                "rejected_by": runner.label,
            }
        return JSONResponse(answers)

    async def task_prompt(self, request: Request) -> Response:
        body = await read_json(request)
        name = field(body, "task", str)
        if name not in known_tasks():
            raise StudioError(400, f"field 'task': unknown task {name!r} (known: {', '.join(known_tasks())})")
        seed = in_range("seed", field(body, "seed", int, 0), 0, 2**31 - 1)
        drawn = draw_task_prompt(name, seed)
        return JSONResponse(
            {"task": name, "seed": seed, "prompt": drawn.prompt.text, "prompt_id": drawn.prompt.id}
        )

    async def open_session(self, request: Request) -> Response:
        body = await read_json(request)
        prompt = field(body, "prompt", str)
        if not prompt.strip():
            raise StudioError(400, "field 'prompt' is empty")
        system = field(body, "system", str, "")
        sampling = Sampling(
            temperature=in_range("temperature", field(body, "temperature", float, 0.0), 0.0, MAX_TEMPERATURE),
            top_p=in_range("top_p", field(body, "top_p", float, 1.0), 1e-6, 1.0),
            max_new_tokens=in_range(
                "max_new_tokens",
                field(body, "max_new_tokens", int, min(Sampling.max_new_tokens, self.studio.token_limit)),
                1,
                self.studio.token_limit,
            ),
            seed=in_range("seed", field(body, "seed", int, 0), 0, 2**31 - 1),
        )
        task = None
        task_ref = field(body, "task", dict, None)
        if task_ref is not None:
            name = field(task_ref, "name", str)
            if name not in known_tasks():
                raise StudioError(400, f"field 'task.name': unknown task {name!r}")
            drawn = draw_task_prompt(
                name, in_range("task.seed", field(task_ref, "seed", int, 0), 0, 2**31 - 1)
            )
            # A prompt edited after it was drawn is no longer the task's: its checker would judge the wrong thing.
            task = drawn if drawn.prompt.text == prompt else None
        messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
            {"role": "user", "content": prompt}
        ]
        session = await run_in_threadpool(self.studio.open, messages, sampling, task)
        return JSONResponse({"session": session.id, "segment": 0, "task": _task_json(task)})

    async def stream(self, request: Request) -> Response:
        session = self.studio.get(request.path_params["session"])
        segment = self.studio.segment(session, int(request.path_params["segment"]))
        first = request.query_params.get("from", "0")
        if not first.isdigit():
            raise StudioError(400, f"query parameter 'from': expected a token index, got {first!r}")

        async def events():
            sent, suggested = int(first), False
            while True:
                finished = segment.finished.is_set()
                # The last piece may still take held-back bytes until the segment ends.
                ready = len(segment.pieces) if finished else max(len(segment.pieces) - 1, sent)
                for index in range(sent, ready):
                    yield json.dumps({"type": "token", "index": index, "text": segment.pieces[index]}) + "\n"
                sent = ready
                if segment.suggestion is not None and not suggested:
                    suggested = True
                    yield json.dumps({"type": "suggest", **dataclasses.asdict(segment.suggestion)}) + "\n"
                if finished:
                    end = {
                        "type": "end",
                        "complete": segment.complete,
                        "stopped": segment.stopped,
                        "cancelled": segment.cancelled,
                        "split": bool(segment.split_tail),
                        "error": segment.error,
                        "tokens": len(segment.pieces),
                    }
                    yield json.dumps(end) + "\n"
                    return
                await asyncio.sleep(STREAM_POLL_S)

        return StreamingResponse(
            events(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
        )

    async def cancel(self, request: Request) -> Response:
        session = self.studio.get(request.path_params["session"])
        session.cancel()
        return JSONResponse({"cancelled": session.id})

    async def stop(self, request: Request) -> Response:
        session = self.studio.get(request.path_params["session"])
        segment = self.studio.segment(session, int(request.path_params["segment"]))
        session.stop(segment)
        return JSONResponse({"stopping": segment.index})

    async def finish(self, request: Request) -> Response:
        session = self.studio.get(request.path_params["session"])
        segment = self.studio.segment(session, int(request.path_params["segment"]))
        written = await run_in_threadpool(session.finish, segment)
        return JSONResponse({"finishing": segment.index, "from": written})

    async def save_steer(self, request: Request) -> Response:
        session = self.studio.get(request.path_params["session"])
        body = await read_json(request)
        segment = self.studio.segment(session, field(body, "segment", int))
        cut = field(body, "cut", int)
        chosen = field(body, "chosen", str)
        chosen_complete = field(body, "chosen_complete", bool, False)
        confirm = field(body, "confirm", bool, False)
        steer, next_segment, count = await run_in_threadpool(
            lambda: self.studio.save_steer(session, segment, cut, chosen, chosen_complete, confirm=confirm)
        )
        return JSONResponse(
            {
                "steer": steer.to_dict(),
                "kept": steer.prefix[len(segment.start_text) :],
                "next_segment": None if next_segment is None else next_segment.index,
                "steers": count,
            }
        )

    async def list_steers(self, request: Request) -> Response:
        mode = request.query_params.get("span_mode", SpanMode.DIVERGENT.value)
        if mode not in {m.value for m in SpanMode}:
            raise StudioError(
                400, f"span_mode: {mode!r} is not one of {', '.join(m.value for m in SpanMode)}"
            )

        def build():
            return [
                {
                    "line": stored.line,
                    "version": stored.version,
                    "steer": stored.steer.to_dict(),
                    **steer_view(stored.steer, self.studio.runner.tokenizer, mode),
                }
                for stored in self.studio.store.list()
            ]

        rows = await run_in_threadpool(build)
        return JSONResponse({"steers_file": str(self.studio.store.path), "span_mode": mode, "steers": rows})

    async def edit_steer(self, request: Request) -> Response:
        steer_id = request.path_params["steer_id"]
        body = await read_json(request)
        version = field(body, "version", str)
        stored = next(
            (s for s in await run_in_threadpool(self.studio.store.list) if s.steer.id == steer_id), None
        )
        if stored is None:
            raise StudioError(404, f"no steer {steer_id!r} in {self.studio.store.path.name}")
        old = stored.steer
        try:
            new = dataclasses.replace(
                old,
                prefix=field(body, "prefix", str, old.prefix),
                rejected=field(body, "rejected", str, old.rejected),
                chosen=field(body, "chosen", str, old.chosen),
                chosen_complete=field(body, "chosen_complete", bool, old.chosen_complete),
                meta={**old.meta, "edited": datetime.now(timezone.utc).isoformat(timespec="seconds")},
            )
            tokenized = tokenize_steer(new, self.studio.runner.tokenizer)
        except ValueError as error:
            raise StudioError(400, f"not a usable steer: {error}") from None
        warnings = degenerate_warnings(new, tokenized)
        if warnings and not field(body, "confirm", bool, False):
            raise StudioError(409, "; ".join(warnings), confirm=True)
        updated = await run_in_threadpool(self.studio.store.replace, steer_id, version, new)
        return JSONResponse({"steer": updated.steer.to_dict(), "version": updated.version})

    async def delete_steer(self, request: Request) -> Response:
        version = request.query_params.get("version")
        if not version:
            raise StudioError(400, "query parameter 'version' is missing")
        await run_in_threadpool(self.studio.store.delete, request.path_params["steer_id"], version)
        return JSONResponse({"deleted": request.path_params["steer_id"]})

    async def studio_error(self, request: Request, error: StudioError) -> Response:
        body = {"error": str(error), **({"confirm": True} if error.confirm else {})}
        return JSONResponse(body, status_code=error.status)

    async def http_error(self, request: Request, error: HTTPException) -> Response:
        return JSONResponse({"error": error.detail}, status_code=error.status_code)


def create_app(studio: Studio, *, token: str, loopback_only: bool = True) -> Starlette:
    """The ASGI app serving `studio`; every request must carry `token`."""
    handlers = StudioRoutes(studio, token)
    routes = [
        Route("/", handlers.index),
        Route("/static/{name}", handlers.static),
        Route("/favicon.ico", handlers.favicon),
        Route("/api/info", handlers.info),
        Route("/api/task-prompt", handlers.task_prompt, methods=["POST"]),
        Route("/api/sessions", handlers.open_session, methods=["POST"]),
        Route("/api/sessions/{session}/segments/{segment:int}/stream", handlers.stream),
        Route("/api/sessions/{session}/cancel", handlers.cancel, methods=["POST"]),
        Route("/api/sessions/{session}/segments/{segment:int}/stop", handlers.stop, methods=["POST"]),
        Route("/api/sessions/{session}/segments/{segment:int}/finish", handlers.finish, methods=["POST"]),
        Route("/api/sessions/{session}/steers", handlers.save_steer, methods=["POST"]),
        Route("/api/steers", handlers.list_steers),
        Route("/api/steers/{steer_id}", handlers.edit_steer, methods=["PUT"]),
        Route("/api/steers/{steer_id}", handlers.delete_steer, methods=["DELETE"]),
        Route("/api/training", handlers.training_info),
        Route("/api/training", handlers.start_training, methods=["POST"]),
        Route("/api/training/stop", handlers.stop_training, methods=["POST"]),
        Route("/api/training/stream", handlers.training_stream),
        Route("/api/model", handlers.use_model, methods=["POST"]),
        Route("/api/compare", handlers.compare, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if studio.training is not None:  # a server going away stops its training process
            await run_in_threadpool(studio.training.shutdown)

    middleware = [Middleware(Guard, token=token)]
    if loopback_only:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={StudioError: handlers.studio_error, HTTPException: handlers.http_error},
    )


def _task_json(task: TaskContext | None) -> dict | None:
    return None if task is None else {"name": task.task.name, "prompt_id": task.prompt.id}
