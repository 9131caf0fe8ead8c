"""Tests of the served model (faml_jax.serve, ``python -m experiments.serve``) against a real
uvicorn on a free loopback port: its answers are experiments.predict's on the same photos (boxes,
landmarks, scores to 1e-5), every bad input is a 4xx JSON answer of one line, concurrent requests
share compiled calls and get the sequential answers, a full queue is 429 with Retry-After, the
requests in flight are answered when the server stops (SIGTERM for the program)."""

import io
import json
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from helpers import jittered_variables, png16, program_env, tiny_config, write_run
from PIL import Image

httpx = pytest.importorskip("httpx", reason="httpx is in the test extra")
pytest.importorskip("fastapi", reason="the serve extra is in the test extra")
skimage_data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra")

from faml_jax import serve  # noqa: E402
from faml_jax.predict import Predictor  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny networks (32 px, synthetic, no attention blocks) written by hand, and photos:
    scikit-image's astronaut, face crops (one JPEG, one 16-bit colour PNG)."""
    root = tmp_path_factory.mktemp("serve")
    config = tiny_config(root / "data", 1)
    paths = [write_run(root / f"net{i}", config, jittered_variables(config, i)) for i in range(2)]
    photos = root / "photos"
    photos.mkdir()
    Image.fromarray(skimage_data.astronaut()).save(photos / "astronaut.png")
    faces = root / "faces"
    faces.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(faces / "a.jpg", quality=90)
    (faces / "b.png").write_bytes(png16(rng.integers(0, 65536, (36, 36, 3), dtype=np.uint16)))
    return root, paths


@pytest.fixture(scope="module")
def served(runs):
    """The two networks served with batches of up to 4 faces and a body limit of 1 MiB."""
    _, paths = runs
    predictor = Predictor.from_runs(paths)
    app = serve.create_app(predictor, serve.Limits(max_batch=4, max_wait_ms=2, max_body_mb=1))
    with serve.running(app) as url:
        yield predictor, url


def post(url, payload: bytes, content_type="image/png", **params):
    # No client timeout: some requests wait on purpose (the servers' own timeout answers 503).
    return httpx.post(
        f"{url}/v1/predict", content=payload, headers={"Content-Type": content_type}, params=params, timeout=None
    )


def wait_until(condition, what: str, seconds: float = 300.0):
    """Poll ``condition()`` (every 10 ms) until true; fail saying ``what`` after ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.01)


def predicted_by_the_program(paths, inputs, out, faces):
    from experiments import predict as program

    args = [a for p in paths for a in ("--run", str(p))]
    code = program.main(
        [*args, "--faces", faces, "--out", str(out), "--no-annotated", "--no-progress", *map(str, inputs)]
    )
    assert code == 0
    return json.loads((out / "predictions.json").read_text())["faces"]


def assert_same_faces(answered, expected):
    assert len(answered) == len(expected) > 0
    for got, want in zip(answered, expected):
        assert (got["face"], got["box"], got["landmarks"]) == (want["face"], want["box"], want["landmarks"])
        assert (got["class"], got["networks"]) == (want["class"], want["networks"])
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-5)
        assert list(got["scores"]) == list(want["scores"])
        np.testing.assert_allclose(list(got["scores"].values()), list(want["scores"].values()), atol=1e-5)


def test_the_answers_are_experiments_predicts(runs, served, tmp_path):
    root, paths = runs
    _, url = served
    photo = root / "photos" / "astronaut.png"
    expected = predicted_by_the_program(paths, [photo], tmp_path / "detect", "detect")
    as_form = httpx.post(f"{url}/v1/predict", files={"file": ("astronaut.png", photo.read_bytes(), "image/png")})
    assert as_form.status_code == 200
    answer = as_form.json()
    assert (answer["width"], answer["height"], answer["strategy"]) == (512, 512, "t2v")
    assert_same_faces(answer["faces"], expected)
    assert len(expected) == 1 and expected[0]["box"] is not None  # the astronaut's face, found
    # Faces already cut out (--faces aligned), among them a 16-bit colour PNG read as predict reads it.
    files = sorted((root / "faces").iterdir())
    expected = predicted_by_the_program(paths, files, tmp_path / "aligned", "aligned")
    for file, want in zip(files, expected):
        kind = "image/jpeg" if file.suffix == ".jpg" else "image/png"
        assert_same_faces(post(url, file.read_bytes(), kind, faces="aligned").json()["faces"], [want])


def test_a_map_comes_as_a_png_of_the_networks_input_size(runs, served):
    root, _ = runs
    predictor, url = served
    answer = post(url, (root / "faces" / "a.jpg").read_bytes(), "image/jpeg", faces="aligned", map="gradcam").json()
    head, encoded = answer["faces"][0]["map"].split(",", 1)
    import base64

    with Image.open(io.BytesIO(base64.b64decode(encoded))) as picture:
        assert head == "data:image/png;base64" and picture.size == (32, 32) and picture.mode == "RGBA"
    refused = post(url, (root / "faces" / "a.jpg").read_bytes(), "image/jpeg", faces="aligned", map="relevancy")
    assert (
        refused.status_code == 422 and "relevancy maps need a model with attention blocks" in refused.json()["message"]
    )


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG" if array.dtype == np.uint8 else "TIFF")
    return buffer.getvalue()


FACE = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
BAD_INPUTS = {  # name: (body, content type, status, what the message says)
    "not an image": (b"hello, world", "image/png", 422, "cannot decode image (request body): not an image format"),
    "truncated": (_png(FACE)[:300], "image/png", 422, "cannot decode image (request body)"),
    "levels beyond 16 bits": (
        _png(np.full((8, 8), 70000, np.int32)),
        "image/tiff",
        422,
        "not 8- or 16-bit grey levels",
    ),
    "empty": (b"", "image/jpeg", 400, "is empty (0 bytes)"),
    "wrong content type": (_png(FACE), "text/plain", 415, "content type 'text/plain'"),
    "no content type": (_png(FACE), "", 415, "no content type"),
    "body too large": (b"\xff\xd8" + bytes(1 << 20), "image/jpeg", 413, "over the limit of 1 MiB"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_each_bad_input_is_a_4xx_json_answer_of_one_line(served, name):
    _, url = served
    body, content_type, status, message = BAD_INPUTS[name]
    answer = post(url, body, content_type, faces="aligned")
    assert answer.status_code == status and answer.headers["content-type"] == "application/json"
    error = answer.json()
    assert error["status"] == status and message in error["message"]
    assert "\n" not in error["message"] and "Traceback" not in answer.text


def test_other_refusals_are_json_too(served, monkeypatch):
    _, url = served
    monkeypatch.setenv("FAML_JAX_MAX_PIXELS", "1000")  # read at each decode, in the server's threads too
    answer = post(url, _png(FACE), faces="aligned")
    assert answer.status_code == 413 and "40x40 pixels" in answer.json()["message"]
    monkeypatch.delenv("FAML_JAX_MAX_PIXELS")
    chunked = httpx.post(f"{url}/v1/predict", content=iter([bytes(600_000)] * 2), headers={"Content-Type": "image/png"})
    assert chunked.status_code == 413  # sent without a length: refused while reading
    not_a_file = httpx.post(f"{url}/v1/predict", files={"file": ("notes.txt", b"hi", "text/plain")})
    assert not_a_file.status_code == 415 and "'text/plain'" in not_a_file.json()["message"]
    for params in ({"faces": "../../etc/passwd"}, {"map": "x"}):  # nothing a request says becomes a path
        assert post(url, _png(FACE), **params).status_code == 422
    assert httpx.get(f"{url}/nowhere").json() == {"status": 404, "error": "Not Found", "message": "Not Found"}


def test_the_model_health_openapi_and_page(served):
    predictor, url = served
    model = httpx.get(f"{url}/v1/model").json()
    assert model["networks"] == ["net0", "net1"] and model["classes"] == list(predictor.classes)
    assert (model["input_size"], model["strategy"], model["call_sizes"]) == (32, "t2v", [1, 2, 4])
    assert model["versions"]["jax"] and httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{url}/readyz").json()["ready"] is True
    schema = httpx.get(f"{url}/openapi.json").json()
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/*"} <= set(body) and "/v1/model" in schema["paths"]
    page = httpx.get(f"{url}/")
    assert (
        page.status_code == 200
        and "getUserMedia" in page.text
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    assert httpx.get(f"{url}/docs").status_code == 404  # Swagger UI would load a CDN's scripts


def test_concurrent_requests_share_calls_and_get_the_sequential_answers(runs, served):
    """With a long wait, a call is made when 4 faces are there: 8 concurrent one-face requests are
    exactly two calls of 4, and each answer equals the one-request-at-a-time answer."""
    predictor, url = served
    faces = list(np.random.default_rng(11).integers(0, 256, (8, 30, 30, 3), dtype=np.uint8))
    sequential = [post(url, _png(f), faces="aligned").json()["faces"] for f in faces]
    app = serve.create_app(predictor, serve.Limits(max_batch=4, max_wait_ms=600_000))
    with serve.running(app) as batched:
        answers = [None] * len(faces)

        def ask(i):
            answers[i] = post(batched, _png(faces[i]), faces="aligned").json()["faces"]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(faces))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = app.state.service.batcher.stats
        assert (stats.calls, stats.faces, stats.requests) == (2, 8, 8)
    for got, want in zip(answers, sequential):
        assert_same_faces(got, want)


def test_a_full_queue_is_429_and_stopping_answers_the_request_in_flight(served):
    predictor, _ = served
    app = serve.create_app(predictor, serve.Limits(max_batch=2, max_wait_ms=600_000, max_queue=1))
    first = {}
    with serve.running(app) as url:
        waiting = threading.Thread(target=lambda: first.update(answer=post(url, _png(FACE), faces="aligned")))
        waiting.start()
        wait_until(lambda: httpx.get(f"{url}/readyz").json()["queued_faces"] >= 1, "the first face queued")
        refused = post(url, _png(FACE), faces="aligned")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "the queue is full (1 requests)" in refused.json()["message"]
    waiting.join()  # the server stopped: the face waiting for company went through at once
    assert first["answer"].status_code == 200 and len(first["answer"].json()["faces"]) == 1


def test_the_program_serves_and_sigterm_answers_the_request_in_flight(runs, tmp_path):
    import socket

    root, paths = runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "experiments.serve", "--run", str(paths[0]), "--port", str(port)]
    command += ["--max-batch", "2", "--max-wait-ms", "600000"]
    server = subprocess.Popen(command, env=program_env(), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready():
            assert server.poll() is None, server.communicate()[1]  # it has not died
            try:
                return httpx.get(f"{url}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "the program ready")
        answer = {}
        waiting = threading.Thread(target=lambda: answer.update(r=post(url, _png(FACE), faces="aligned")))
        waiting.start()
        wait_until(lambda: httpx.get(f"{url}/readyz").json()["queued_faces"] >= 1, "the face queued")
        server.send_signal(signal.SIGTERM)
        waiting.join()
        _, err = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert answer["r"].status_code == 200 and answer["r"].json()["faces"][0]["networks"] == {
        "net0": answer["r"].json()["faces"][0]["class"]
    }
    assert (
        server.returncode == 128 + signal.SIGTERM
        and err.strip().splitlines()[-1] == "python -m experiments.serve: stopped by SIGTERM"
    )


def test_the_programs_refusals_are_one_line(runs, capsys):
    from experiments import serve as program

    _, paths = runs
    assert program.main(["--run", str(paths[0]), "--max-batch", "0"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "python -m experiments.serve: error: serve limit max_batch must be at least 1, got 0"
    )
    assert program.main(["--max-batch", "4"]) == 2
    assert "give --run DIR (one or more) or --population DIR" in capsys.readouterr().err


def test_the_load_generators_client_gets_the_servers_answers(served):
    """tools.bench_serve's hand-written keep-alive client: its answers are httpx's, byte for byte,
    over one connection, refusals included; its load counts every status."""
    import asyncio

    from tools import bench_serve

    _, url = served
    host, port = url.removeprefix("http://").rsplit(":", 1)
    good, bad = _png(FACE), b"hello, world"

    async def three():
        connection = bench_serve.Connection(host, int(port))
        try:
            return [await connection.post("/v1/predict?faces=aligned", body, "image/png") for body in (good, bad, good)]
        finally:
            connection.close()

    answers = asyncio.run(three())
    assert [status for status, _, _ in answers] == [200, 422, 200]
    assert answers[0][2] == answers[2][2] == post(url, good, faces="aligned").content
    assert answers[1][2] == post(url, bad, faces="aligned").content
    measured = asyncio.run(bench_serve.load(url, 3, 9, 600, good))
    assert measured["answered"] == 9 and measured["statuses"] == {200: 9}


def test_a_failed_compilation_is_said_by_readyz_and_every_answer(served, monkeypatch, caplog):
    """The calls could not be compiled (here: warm raises): /readyz stays 503 saying why, a
    request is 503 with that one line, the server logs it, and it still stops when asked."""
    predictor, _ = served

    def fail(self):
        raise MemoryError("out of memory compiling the call of 4 faces")

    monkeypatch.setattr(serve.Batcher, "warm", fail)
    app = serve.create_app(predictor, serve.Limits(max_batch=4))
    with serve.running(app, ready=False) as url:
        wait_until(lambda: "error" in httpx.get(f"{url}/readyz").json(), "the failure said")
        ready = httpx.get(f"{url}/readyz")
        answer = post(url, _png(FACE), faces="aligned")
    why = "compiling the calls failed: MemoryError: out of memory compiling the call of 4 faces"
    assert ready.status_code == 503 and ready.json()["error"] == why
    assert answer.status_code == 503 and answer.json()["message"] == why
    assert why in caplog.text


def test_serving_on_a_port_in_use_is_one_line(served):
    import socket

    predictor, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port} "):
            serve.serve(serve.create_app(predictor, serve.Limits(max_batch=1)), "127.0.0.1", port)
