"""Load test of the served model on loopback: requests/s, latency percentiles and errors with 1, 4,
16 and 64 concurrent clients, for dynamic batching (``--max-batch``) and for a batch of one in the
same run, and the server's memory after 10,000 requests against after 100.

    python -m tools.bench_serve                        # the table to stdout
    python -m tools.bench_serve --clients 1 16 --requests 200 --seconds 10 --memory-requests 0
    python -m tools.bench_serve --compiled-calls --model paper   # the network's call alone, per size

Each configuration is a server process (``faml_jax.serve`` over a ``Predictor`` of random
weights: speed does not depend on them) on 127.0.0.1 only; each client posts a face crop
(``faces=aligned``, a PNG) and, answered 429, waits what Retry-After says. Every level is bounded
by ``--requests`` and ``--seconds``. Measurements, never test assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import numpy as np

from tools import benchmarking

MODELS = {  # name: (preset options, what the table says)
    "small": (
        dict(widths=(16, 32, 64, 128), input_size=64, attn_dim=32, attn_heads=2, attn_depth=1),
        "R18+FAML widths 16-128, 64 px",
    ),
    "paper": (dict(), "R18+FAML, the paper's widths, 224 px"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=600, help="requests per level at most (default 600)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most (default 30)")
    parser.add_argument("--max-batch", type=int, default=16, help="dynamic batching's largest call (default 16)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="dynamic batching's longest wait (default 5)")
    parser.add_argument("--max-queue", type=int, default=64, help="the server's queue (default 64)")
    parser.add_argument("--model", choices=list(MODELS), default="small", help="the network served (default small)")
    parser.add_argument("--memory-requests", type=int, default=10_000, help="requests of the memory run (0: none)")
    parser.add_argument(
        "--compiled-calls", action="store_true", help="time the compiled call alone at each call size, no server"
    )
    parser.add_argument("--server", type=int, help=argparse.SUPPRESS)  # internal: serve on this port
    return parser


# ---------------------------------------------------------------------------------------------
# The server (a process of its own, so that the clients do not share its interpreter)


def build_predictor(args):
    """A ``Predictor`` of ``--model`` with random weights (speed does not depend on them)."""
    import jax

    from faml_jax import models, predict
    from faml_jax.presets import preset

    config = preset("rafdb", from_scratch=True, model_options=MODELS[args.model][0])
    variables = models.init(models.network(config.model), jax.random.key(0))
    return predict.Predictor(config, [variables], ["net0"], batch_size=args.max_batch)


def run_server(args) -> None:
    from faml_jax import serve

    limits = serve.Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
    serve.serve(serve.create_app(build_predictor(args), limits), "127.0.0.1", args.server)


def compiled_calls(args) -> list[str]:
    """The compiled call alone (``Group.step``, what the batcher calls) at each call size: the
    most any batching can gain is the per-face time at 1 over that at ``--max-batch``."""
    from faml_jax.serve.batching import call_sizes

    group = build_predictor(args).groups[0]
    lines = [
        f"Compiled call of {MODELS[args.model][1]}, {benchmarking.device()}: median of at least 5 calls",
        "",
        "| faces per call | ms per call | ms per face |",
        "|---|---|---|",
    ]
    for size in call_sizes(args.max_batch):
        images = np.zeros((size, group.input_size, group.input_size, 3), np.uint8)
        np.asarray(group.step(group.variables, images))  # compiled and warm
        times = []
        for _ in range(max(5, 64 // size)):
            started = time.perf_counter()
            np.asarray(group.step(group.variables, images))
            times.append(time.perf_counter() - started)
        median = float(np.median(times)) * 1000
        lines.append(f"| {size} | {median:.2f} | {median / size:.2f} |")
    return lines


def start_server(args, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "tools.bench_serve", "--server", str(port), "--model", args.model]
    command += [
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--max-queue",
        str(args.max_queue),
    ]
    log = tempfile.TemporaryFile("w+")  # the server's messages, read if it stops (a pipe could fill up)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server stopped: {log.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # compiling: ask again
    raise RuntimeError("the server was not ready within 600 s")


# ---------------------------------------------------------------------------------------------
# The clients


def face_png(size: int = 64) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Connection:
    """One keep-alive HTTP/1.1 connection on loopback, written by hand: the load generator shares
    the 2 cores with the server, and httpx's client used about half a core at 400 requests/s
    (this one about 6%), which the server then did not have."""

    def __init__(self, host: str, port: int):
        self.host, self.port, self.streams = host, port, None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, dict, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        try:
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("the server closed the connection")
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            answer = await reader.readexactly(int(headers.get("content-length", 0)))
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split()[1]), headers, answer

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def load(url: str, clients: int, requests: int, seconds: float, payload: bytes) -> dict:
    """``clients`` concurrent connections posting ``payload`` until ``requests`` were sent or
    ``seconds`` passed: latencies of the answered, counts by status."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies, statuses, sent = [], {}, [0]
    end = time.monotonic() + seconds

    async def one_client():
        connection = Connection(host, int(port))
        try:
            while sent[0] < requests and time.monotonic() < end:
                sent[0] += 1
                started = time.perf_counter()
                try:
                    status, headers, _ = await connection.post("/v1/predict?faces=aligned", payload, "image/png")
                except (OSError, asyncio.IncompleteReadError) as error:
                    status, headers = type(error).__name__, {}
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                elif status == 429:
                    await asyncio.sleep(float(headers.get("retry-after", 1)))
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "answered": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
        "statuses": statuses,
    }


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def measure(args) -> list[str]:
    payload = face_png()
    lines = [
        f"Served model: {MODELS[args.model][1]}, one network, face crops of 64 px (PNG, faces=aligned), "
        f"{benchmarking.device()}; each level at most {args.requests} requests or {args.seconds:g} s",
        "",
        "| batching | clients | answered | requests/s | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    configs = [(f"dynamic (<= {args.max_batch}, {args.max_wait_ms:g} ms)", args.max_batch), ("batch of one", 1)]
    rates = {}
    for name, max_batch in configs:
        process, url = start_server(args, max_batch)
        try:
            asyncio.run(load(url, 4, 40, args.seconds, payload))  # warm the connections and the caches
            for clients in args.clients:
                r = asyncio.run(load(url, clients, args.requests, args.seconds, payload))
                rates[name, clients] = r["per_second"]
                errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items(), key=str) if k != 200) or "none"
                lines.append(
                    f"| {name} | {clients} | {r['answered']} | {r['per_second']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
                    f"{r['p99']:.0f} | {errors} |"
                )
                print(lines[-1], file=sys.stderr, flush=True)
            if max_batch == args.max_batch and args.memory_requests:
                before = asyncio.run(load(url, 16, 100, 600, payload))
                after_100 = rss_mib(process.pid)
                started = time.perf_counter()
                bulk = asyncio.run(load(url, 16, args.memory_requests - 100, 3600, payload))
                after_all = rss_mib(process.pid)
                memory = (
                    f"Memory of the server ({name}, 16 clients): {after_100:.0f} MiB after 100 requests, "
                    f"{after_all:.0f} MiB after {args.memory_requests} ({bulk['answered'] + before['answered']} answered, "
                    f"{time.perf_counter() - started:.0f} s; statuses: {dict(Counter(bulk['statuses']) + Counter(before['statuses']))})"
                )
        finally:
            process.terminate()
            process.wait(120)
    lines.append("")
    for clients in args.clients:
        lines.append(
            f"{clients} client(s): dynamic batching {rates[configs[0][0], clients] / rates[configs[1][0], clients]:.2f}x "
            "the requests/s of a batch of one"
        )
    if args.memory_requests:
        lines += ["", memory]
    return lines


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.server is not None:
        run_server(args)
        return
    if args.compiled_calls:
        print("\n".join(compiled_calls(args)))
        return
    print("\n".join(measure(args)))


if __name__ == "__main__":
    main()
