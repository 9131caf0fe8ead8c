"""Serve trained networks over HTTP: an API and a page with photo upload and a live camera:
``python -m experiments.serve --run DIR [--run DIR ...] | --population EVOLVE_DIR [--port 8000]``.

Endpoints (docs/serving.md): POST /v1/predict (an image in; per face its box, landmarks, scores,
decision, confidence, each network's top-1; ``?map=gradcam`` adds the attention map), GET
/v1/model, /healthz, /readyz (200 once every call size is compiled), /openapi.json, and / (the
page: nothing loaded from the internet). The preprocessing is experiments.predict's. Faces of
concurrent requests go through the compiled call together (--max-batch, --max-wait-ms).

Bound to 127.0.0.1 unless --host says otherwise; no CORS unless --cors names origins. SIGTERM or
Ctrl-C: the requests in flight are answered, then the server stops (exit status 143 or 130).
"""

from __future__ import annotations

import logging
import sys

from experiments.cli import OneLineErrorParser, run_cli
from experiments.flags import add_predictor_arguments, predictor_from_args

logger = logging.getLogger("experiments.serve")


def build_parser():
    parser = OneLineErrorParser.for_program("experiments.serve", __doc__)
    add_predictor_arguments(parser, checkpoint_help="")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-batch", type=int, default=16, help="faces per compiled call at most (default 16)")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a face waits for others (default 5 ms)"
    )
    parser.add_argument(
        "--max-queue", type=int, default=64, help="requests taken at once; more are answered 429 (default 64)"
    )
    parser.add_argument(
        "--max-body-mb", type=float, default=32.0, help="largest request body in MiB; larger: 413 (default 32)"
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a request may take; longer: 503 (default 30)"
    )
    parser.add_argument("--workers", type=int, default=2, help="threads decoding photos and finding faces (default 2)")
    parser.add_argument(
        "--cors",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages of ORIGIN call the API (repeat; default none)",
    )
    return parser


def main(argv=None) -> int:
    def body(args):
        from faml_jax import serve

        limits = serve.Limits(
            args.max_batch, args.max_wait_ms, args.max_queue, args.max_body_mb, args.timeout, args.workers
        )
        limits.check()
        predictor = predictor_from_args(args, args.max_batch)
        app = serve.create_app(predictor, limits, cors=tuple(args.cors))
        logger.info(
            f"{len(predictor.names)} network(s) ({', '.join(predictor.names)}), {predictor.dataset}, "
            f"{predictor.input_size} px, strategy {predictor.strategy}: http://{args.host}:{args.port}/"
        )
        serve.serve(app, args.host, args.port)

    return run_cli(build_parser(), argv, body)


if __name__ == "__main__":
    sys.exit(main())
