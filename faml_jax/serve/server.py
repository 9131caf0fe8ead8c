"""Running the served model's app with uvicorn: in the foreground (``serve``: SIGTERM and SIGINT
finish the requests in flight, then stop) or in a thread for a notebook, a test or a benchmark
(``running``)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

import uvicorn

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 60.0  # after SIGTERM, requests still running after this are cut off


def _config(app, host: str, port: int, drain: float) -> uvicorn.Config:
    # uvicorn's own access log off: the app logs what went wrong; uvicorn's handlers would replace
    # the program's logging set-up.
    return uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=drain)


def serve(app, host: str = "127.0.0.1", port: int = 8000, *, drain: float = DRAIN_SECONDS) -> None:
    """Serve ``app`` until SIGTERM or SIGINT: then the listening socket closes, the requests in
    flight are answered at once (faces waiting for company go into a call; for at most ``drain``
    seconds), and the app's lifespan ends."""
    server = _Server(_config(app, host, port, drain))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot listen (it has logged why)
        server.started = False
    if not server.started:
        raise OSError(f"cannot serve on {host}:{port} (the address is in use or not this machine's)")


class _Server(uvicorn.Server):
    """uvicorn's server that says when it is listening, and tells the app when it stops taking
    requests (before it waits for those in flight). In a thread other than the main one it
    leaves the process's signals alone (its owner stops it)."""

    def __init__(self, config):
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.listening.set()

    async def shutdown(self, sockets=None) -> None:
        service = getattr(getattr(self.config.app, "state", None), "service", None)
        if service is not None:
            service.draining = True
            service.batcher.drain()
        await super().shutdown(sockets)


@contextlib.contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, *, ready: bool = True, timeout: float = 600):
    """``app`` served from a thread; yields its base URL (``port`` 0: a free port), once its
    compiled calls are warm (``ready``). Leaving the block stops it as SIGTERM would."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = _Server(_config(app, host, port, DRAIN_SECONDS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="faml-serve", daemon=True)
    thread.start()
    try:
        if not server.listening.wait(timeout) or (ready and not app.state.service.batcher.warmed.wait(timeout)):
            raise TimeoutError(f"the server did not start within {timeout} s")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
