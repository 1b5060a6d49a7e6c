"""`localdpo studio`: a local web page to make steers by hand (see docs/studio.md)."""

from __future__ import annotations

import contextlib

HELP = "a local web page to make steers by hand: watch the model write, stop it, correct it, let it resume"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="HF id, local dir, the embedded name, or 'tiny' (tests)",
    )
    parser.add_argument(
        "--steers", default="steers.jsonl", help="steer file to append to (created if missing)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (not loopback: a warning)")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda when available)")
    parser.add_argument(
        "--token-limit", type=int, default=1024, help="most tokens one answer segment may ask for"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        help="a task of your own to offer beside the built-in ones: module:Class or path/to/file.py:Class "
        "(repeatable; docs/tasks.md)",
    )


def run(args) -> int:
    import sys

    def fail(message: str) -> int:
        print(f"localdpo studio: {message}", file=sys.stderr)
        return 2

    if not 0 <= args.port <= 65535:
        return fail(f"--port {args.port} is not a port number")
    if args.token_limit < 1:
        return fail(f"--token-limit must be >= 1, got {args.token_limit}")
    from localdpo.tasks import UnknownTaskError, get_task

    try:
        for spec in args.task:  # before the model loads: a task that does not fit fails at once
            get_task(spec)
    except UnknownTaskError as error:
        return fail(str(error))
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as error:
        return fail(f"needs the studio extra ({error.name} is missing): pip install 'localdpo[studio]'")
    import torch

    from localdpo.steers.steer import SteerFileError
    from localdpo.studio.server import address, bind, is_loopback, load_studio, new_token, serve

    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        sock = bind(args.host, args.port)
    except OSError as error:
        return fail(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})")
    loopback = is_loopback(args.host)
    if not loopback:
        print(
            f"localdpo studio: WARNING: listening on {args.host}, not loopback: anyone who can reach this "
            "machine and learns the token can generate with the model and write the steer file"
            + (
                " (the address below is this machine's loopback; from elsewhere, use its name)"
                if args.host.strip("[]") in ("0.0.0.0", "::")
                else ""
            ),
            file=sys.stderr,
        )
    try:
        studio = load_studio(args.model, args.steers, device=device, token_limit=args.token_limit)
    except (SteerFileError, FileNotFoundError, ValueError, OSError) as error:
        sock.close()
        return fail(str(error))
    token = new_token()
    print(f"localdpo studio: model {args.model} on {device}, steers -> {studio.store.path}")
    print(f"open {address(sock, token)}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(studio, sock, token, loopback_only=loopback)
    return 0
