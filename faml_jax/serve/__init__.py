"""The served model: an HTTP API and a page (``python -m experiments.serve``, docs/serving.md).

    >>> from faml_jax import predict, serve
    >>> app = serve.create_app(predict.Predictor.from_run("runs/demo"))
    >>> serve.serve(app, "127.0.0.1", 8000)          # or: with serve.running(app) as url: ...

``app`` (the endpoints, limits and errors), ``batching`` (faces of concurrent requests in one
compiled call), ``multipart`` (the image in a request body), ``server`` (uvicorn), and
``static/index.html`` (the page). Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).
"""

from faml_jax.serve.app import Limits, create_app
from faml_jax.serve.batching import Batcher, call_sizes
from faml_jax.serve.server import running, serve

__all__ = ["Batcher", "Limits", "call_sizes", "create_app", "running", "serve"]
