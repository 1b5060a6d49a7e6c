"""Start a studio: load the model, open the steer file, bind a socket and serve the app with uvicorn."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket

from localdpo.studio.app import create_app
from localdpo.studio.session import ModelRunner, Studio
from localdpo.studio.store import SteerStore
from localdpo.studio.training import Training

SHUTDOWN_GRACE_S = 2


def load_studio(
    model_name: str, steers_path: str | os.PathLike, *, device: str = "cpu", token_limit: int = 1024
) -> Studio:
    """A studio over `model_name` (anything `load_model` loads, `tiny` included) writing `steers_path`, training
    from the page on `device`."""
    from localdpo.models.loading import load_model

    store = SteerStore(steers_path)  # before the model: a bad file fails fast
    model, tokenizer = load_model(model_name, device=device)
    training = Training(store.path, model_name, device)
    return Studio(
        ModelRunner(model, tokenizer, model_name), store, token_limit=token_limit, training=training
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: a free one, chosen by the system)."""
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(64)
    return sock


def address(sock: socket.socket, token: str) -> str:
    """The URL to open: the bound host and port, and the token; a loopback address when bound to all
    addresses (`0.0.0.0`, `::`), which a browser cannot open."""
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:
        host = "127.0.0.1" if ipaddress.ip_address(host).version == 4 else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/?token={token}"


def serve(
    studio: Studio, sock: socket.socket, token: str | None = None, *, loopback_only: bool = True
) -> None:
    """Serve `studio` on `sock` until interrupted; a training run it started is stopped on the way out."""
    import uvicorn

    app = create_app(studio, token=token or new_token(), loopback_only=loopback_only)
    # Open streams (an answer, a training run followed by the page) are cut after this many seconds of
    # shutdown, rather than waited for: the app's shutdown then stops the training process.
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if studio.training is not None:
            studio.training.shutdown()


def new_token() -> str:
    return secrets.token_urlsafe(24)
