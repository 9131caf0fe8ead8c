"""The served model's ASGI app: ``create_app(predictor)``.

**[choice]** FastAPI on uvicorn: the Python ML field's convention for model APIs (an ASGI app,
its OpenAPI description written from the endpoints' declarations, the server every tutorial and
deployment guide names); Starlette alone would need the OpenAPI description written by hand,
Gradio would bring a page of its own that loads scripts and fonts from the internet.

Endpoints (docs/serving.md):

  POST /v1/predict   an image (multipart file or raw body) -> per face the box, landmarks, every
                     class's score, the decision, its confidence, each network's top-1; ``map``
                     adds the attention map as a PNG. Preprocessing is ``experiments.predict``'s
                     (``photos.photo_faces``, ``Predictor.preprocess``, ``faces="aligned"`` too).
  GET  /v1/model     the networks, classes, input size, strategy, batching, limits, versions
  GET  /healthz      the process answers;  GET /readyz: the compiled calls are warm
  GET  /             the page (``static/index.html``: nothing loaded from elsewhere)
  GET  /openapi.json the OpenAPI description

Limits: the body (413), ``FAML_JAX_MAX_PIXELS`` (413), the requests admitted at once (429 with
Retry-After), a time per request (503 with Retry-After). Every error is ``{"status", "error",
"message"}`` with a one-line message; a failure that is a bug is logged with its traceback and
answered 500 without it. Nothing a request says becomes a path: uploads are read in memory.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import http
import importlib.metadata
import importlib.resources
import io
import logging
import threading
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from faml_jax import faces as face_module
from faml_jax import photos
from faml_jax.data.folders import ImageTooLargeError
from faml_jax.errors import ConfigError, DataError
from faml_jax.serve.batching import Batcher
from faml_jax.serve.multipart import UploadError, image_payload

logger = logging.getLogger(__name__)

MiB = 1 << 20
# The page may load only what the server serves (the camera's stream and the maps are local).
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; connect-src 'self'"
)


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much the server takes on.

    Attributes:
      max_batch: faces per compiled call at most (each size up to it compiled at start).
      max_wait_ms: how long the first face of a call waits for others.
      max_queue: requests admitted at once (reading, finding faces, waiting, computed); one more
        is answered 429 with Retry-After.
      max_body_mb: the largest request body (413 above).
      timeout_s: a request not answered by then is answered 503 with Retry-After.
      workers: threads that decode photos and find faces (the device has its own).
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_body_mb: float = 32.0
    timeout_s: float = 30.0
    workers: int = 2

    def check(self) -> None:
        for name in ("max_batch", "max_queue", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve limit {name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"serve limit {name} must be positive, got {getattr(self, name)}")


class Refusal(Exception):
    """A request answered with an error status and a one-line message."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, " ".join(str(message).split()), retry_after


def error_response(status: int, message: str, retry_after: int | None = None) -> JSONResponse:
    """``{"status", "error", "message"}``: the error's name and one line saying what was wrong."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body = {"status": status, "error": http.HTTPStatus(status).phrase, "message": " ".join(str(message).split())}
    return JSONResponse(body, status_code=status, headers=headers)


class Service:
    """What the endpoints share: the predictor, the batcher, the face finders, the admission
    count. Built by ``create_app``; started and stopped by its lifespan."""

    def __init__(self, predictor, limits: Limits):
        limits.check()
        self.predictor, self.limits = predictor, limits
        self.batcher = Batcher(predictor, max_batch=limits.max_batch, max_wait=limits.max_wait_ms / 1000)
        self.workers = concurrent.futures.ThreadPoolExecutor(limits.workers, thread_name_prefix="faml-photo")
        self.admitted = 0
        self.draining = False
        self.failed: str | None = None  # why the calls could not be compiled (the server cannot answer)
        self._finders = threading.local()  # dlib's detector per thread: no object shared between threads

    # -- in the photo threads ------------------------------------------------------------------

    def finder(self, mode: str):
        found = getattr(self._finders, mode, None)
        if found is None:
            found = face_module.Finder(mode)
            setattr(self._finders, mode, found)
        return found

    def read(self, payload: bytes, where: str, faces: str, crop: str | None):
        """The photo's size, its faces (``photos.photo_faces``) and their prepared crops."""
        min_size = self.predictor.input_size if faces == "aligned" else None
        photo, _ = photos.photo_from_bytes(payload, where, min_size)
        finder = self.finder(crop or face_module.mode_for(self.predictor.dataset)) if faces == "detect" else None
        found = photos.photo_faces(photo, faces, finder)
        crops = [f.crop for f in found]
        return photo.shape[:2], found, crops, self.batcher.prepare(crops)

    def maps(self, crops, kind: str) -> list[str]:
        """Each face's ``kind`` map as a PNG (data URL): the JET colours, opaque where the map is
        high, for drawing over the face."""
        from PIL import Image

        from faml_jax.maps import jet

        combined, _, _ = self.predictor.explain(crops, kind)
        urls = []
        for heat in combined:
            rgba = np.concatenate([jet(heat), np.round(200 * np.clip(heat, 0, 1))[..., None].astype(np.uint8)], -1)
            buffer = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
            urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
        return urls

    # -- on the event loop ---------------------------------------------------------------------

    async def in_workers(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.workers, fn, *args)

    async def predict(self, payload: bytes, where: str, faces: str, crop: str | None, kind: str | None) -> dict:
        if kind is not None:
            self.predictor.check_explainable(kind)
        (height, width), found, crops, prepared = await self.in_workers(self.read, payload, where, faces, crop)
        prediction = await self.batcher.submit(prepared)
        records = [photos.face_record(face, i, faces) for i, face in enumerate(found)]
        photos.describe_faces(records, prediction, self.predictor.names)
        if kind is not None and crops:
            for record, url in zip(records, await self.batcher.in_device_thread(self.maps, crops, kind)):
                record["map"] = url
        return {
            "width": width,
            "height": height,
            "faces": records,
            "classes": list(self.predictor.classes),
            "strategy": self.predictor.strategy,
            "map": kind,
        }

    def model(self) -> dict:
        p = self.predictor
        return {
            "networks": list(p.names),
            "epochs": p.epochs,
            "checkpoint": p.checkpoint,
            "dataset": p.dataset,
            "classes": list(p.classes),
            "input_size": p.input_size,
            "input_sizes": [g.input_size for g in p.groups],
            "architectures": [g.config.model_name for g in p.groups],
            "strategy": p.strategy,
            "faces": photos.FACE_SOURCES,
            "crops": face_module.MODES,
            "crop": face_module.mode_for(p.dataset),
            "maps": [] if p.mixed else ["gradcam", "relevancy"] if p.config.model.attention else ["gradcam"],
            "batching": {"max_batch": self.limits.max_batch, "max_wait_ms": self.limits.max_wait_ms},
            "call_sizes": list(self.batcher.sizes),
            "limits": {
                "max_queue": self.limits.max_queue,
                "max_body_mb": self.limits.max_body_mb,
                "max_pixels": _max_pixels(),
                "timeout_s": self.limits.timeout_s,
            },
            "versions": {name: _version(name) for name in ("faml_jax", "jax", "flax", "fastapi", "uvicorn")},
        }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _max_pixels() -> int:
    from faml_jax.data.folders import max_pixels

    return max_pixels()


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 as soon as it is longer than ``limit`` bytes (by its
    Content-Length before reading, or while reading a body sent in chunks)."""
    declared = request.headers.get("content-length")
    too_large = f"request body over the limit of {limit / MiB:g} MiB (the server's --max-body-mb)"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, too_large)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refusal(413, too_large)
    return bytes(body)


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "the photo: a multipart form's file (field `file`), or the raw body with an image content type",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
ERRORS = {
    status: {"description": http.HTTPStatus(status).phrase + ": " + why}
    for status, why in {
        400: "an empty body or a malformed form",
        413: "the body or the image's pixels over the limit",
        415: "a content type that is not an image or a form",
        422: "not an image, truncated, a pixel layout that cannot be read, or a bad parameter",
        429: "the queue is full (Retry-After says when to try again)",
        503: "not ready yet, stopping, or the request took too long (Retry-After)",
    }.items()
}


def create_app(predictor, limits: Limits = Limits(), *, cors: tuple[str, ...] = ()) -> FastAPI:
    """The ASGI app serving ``predictor`` (a ``predict.Predictor``). Its lifespan compiles every
    call size in the background (``/readyz`` answers 200 after) and, when the server stops,
    answers what is waiting before the device thread ends. ``cors``: origins other pages may
    call the API from (none unless given)."""
    service = Service(predictor, limits)
    page = importlib.resources.files("faml_jax.serve").joinpath("static/index.html").read_bytes()

    def warmed(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # /readyz stays 503, saying why
            service.failed = f"compiling the calls failed: {type(task.exception()).__name__}: {task.exception()}"
            logger.error(service.failed, exc_info=task.exception())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        warming = asyncio.create_task(service.batcher.start())
        warming.add_done_callback(warmed)
        try:
            yield
        finally:
            service.draining = True
            if not warming.done():
                warming.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was logged above
                await warming
            await service.batcher.stop()
            service.workers.shutdown(wait=False, cancel_futures=True)  # the requests were answered
            logger.info(f"stopped after {service.batcher.stats.requests} request(s)")

    app = FastAPI(
        title="faml_jax",
        summary="facial expressions of the faces in a photo, by trained R18+FAML networks (T2V ensembles)",
        version=_version("faml_jax") or "unknown",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: the description is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors), allow_methods=["GET", "POST"], allow_headers=["*"])

    @app.exception_handler(Refusal)
    async def refused(request, error: Refusal):
        return error_response(error.status, error.message, error.retry_after)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, error):
        return error_response(error.status_code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, error: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return error_response(422, problems)

    @app.exception_handler(Exception)
    async def bug(request, error):
        logger.error(f"{request.method} {request.url.path} failed", exc_info=error)
        return error_response(500, "internal error: the server logged it")

    @app.post(
        "/v1/predict",
        summary="the expressions of the faces in a photo",
        openapi_extra=PREDICT_BODY,
        responses=ERRORS,
    )
    async def predict(
        request: Request,
        faces: Literal["detect", "aligned"] = Query(
            "detect", description="find faces, or take the image as one face cut out"
        ),
        crop: Literal["align", "box"] | None = Query(
            None, description="how found faces are cut (default: as the run's data set)"
        ),
        map: Literal["gradcam", "relevancy"] | None = Query(None, description="add each face's attention map as a PNG"),
    ) -> dict:
        if service.failed:
            raise Refusal(503, service.failed)
        if service.draining or not service.batcher.ready:
            raise Refusal(
                503,
                "the server is "
                + ("stopping" if service.draining else "starting: the compiled calls are not warm yet"),
                1,
            )
        if service.admitted >= limits.max_queue:
            raise Refusal(
                429, f"the queue is full ({limits.max_queue} requests): try again later", service.batcher.retry_after()
            )
        service.admitted += 1
        deadline = asyncio.timeout(limits.timeout_s)
        try:
            async with deadline:
                body = await read_body(request, int(limits.max_body_mb * MiB))
                payload, where = image_payload(body, request.headers.get("content-type"))
                return JSONResponse(await service.predict(payload, where, faces, crop, map))
        except TimeoutError:
            if not deadline.expired():
                raise  # not the request's time: a bug (500, logged)
            raise Refusal(
                503, f"no answer within {limits.timeout_s:g} s (the server's --timeout)", service.batcher.retry_after()
            ) from None
        except ClientDisconnect:
            raise Refusal(400, "the client disconnected while sending the request") from None
        except UploadError as error:
            raise Refusal(error.status, str(error)) from None
        except ImageTooLargeError as error:
            raise Refusal(413, str(error)) from None
        except (DataError, ConfigError) as error:
            raise Refusal(422, str(error)) from None
        finally:
            service.admitted -= 1

    @app.get("/v1/model", summary="the networks, classes, input size, strategy, limits and versions")
    async def model() -> dict:
        return service.model()

    @app.get("/healthz", summary="the server answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="ready: every call size compiled", responses={503: {"description": "not ready"}})
    async def readyz():
        ready = service.batcher.ready and not service.draining
        body = {"ready": ready, "queued_faces": service.batcher.queued, "admitted": service.admitted}
        if service.failed:
            body["error"] = service.failed
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_POLICY})

    return app
