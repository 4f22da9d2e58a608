"""Serve engines over the KServe v2 protocol (HTTP and gRPC), with dynamic batching and metrics.

    kilnrt serve --model digits=examples/digits.onnx
    kilnrt serve --model resnet=resnet50.plan --model bert=bert.onnx --http-port 8000
    kilnrt serve --model models/                # a repository: one folder per model (docs/serving.md)

Triton Inference Server (through PyTriton) serves where it can run, KServe's model server
elsewhere (--backend picks one). Stop with Ctrl+C or SIGTERM.
"""
from __future__ import annotations

import argparse
import os

HELP = "serve engines over HTTP and gRPC (KServe v2, Triton Inference Server)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", required=True, metavar="NAME=PATH",
                   help="a model: NAME=FILE.onnx|FILE.plan, NAME=FOLDER (a model folder with config.json), or "
                        "REPOSITORY (a folder of model folders); repeatable")
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="Prometheus metrics port (default 8002; 0: off). With --ray: the port a Ray instance "
                        "started here exports its metrics on (default: Ray's choice)")
    p.add_argument("--backend", choices=("auto", "triton", "kserve"), default="auto",
                   help="the server: Triton via PyTriton, KServe's model server, or auto (Triton where it runs)")
    p.add_argument("--access-token", metavar="TOKEN", default=os.environ.get("KILNRT_SERVE_ACCESS_TOKEN"),
                   help="Triton only: opens Triton's restricted APIs (system and CUDA shared memory, model "
                        "repository, statistics, trace, logging) to requests with the header "
                        "'triton-access-token: TOKEN' (default: $KILNRT_SERVE_ACCESS_TOKEN, else a random token, "
                        "so that they stay closed). Full trust: the model-repository API loads code, and local "
                        "users can read the token in tritonserver's command line")
    g = p.add_argument_group("model defaults (a model folder's config.json wins)")
    g.add_argument("--max-batch", type=int, metavar="N", help="largest batch (default: the engine's profile; 64 "
                                                               "for an ONNX file)")
    g.add_argument("--instances", type=int, metavar="N", help="execution contexts per model (default 1)")
    g.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own")
    g.add_argument("--max-queue-delay-us", type=int, metavar="US",
                   help="how long a request may wait for others to batch with (default 500)")
    g.add_argument("--preferred-batch-sizes", metavar="N,N", help="batch sizes the batcher sends at once")
    g.add_argument("--no-pad-batches", action="store_true",
                   help="run each batch at its own size (default on CUDA: padded up to a power of two, so "
                        "that a few cached CUDA graphs serve every batch size)")
    g.add_argument("--device", choices=("cpu", "cuda"), help="where ONNX files are built (default: cuda when a GPU is visible, else cpu)")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="precision of ONNX builds (default fp32)")
    g.add_argument("--timing-cache-dir", metavar="DIR", help="timing caches of ONNX builds, reused across starts "
                                                             "(default ~/.cache/kilnrt/serve)")
    g.add_argument("--max-request-bytes", type=int, default=64 << 20, metavar="BYTES",
                   help="largest request body (default 64 MiB; larger ones get 413 / RESOURCE_EXHAUSTED)")
    r = p.add_argument_group("Ray Serve (more than one machine; docs/serving.md)")
    r.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead: one engine per replica, "
                                                       "KServe v2 over HTTP on --http-port and gRPC on --grpc-port")
    r.add_argument("--replicas", type=int, metavar="N", help="replicas per model (default: one per GPU of the "
                                                             "cluster with --device cuda, else 1)")
    r.add_argument("--autoscale", metavar="MIN:MAX[:TARGET]", help="Ray Serve autoscaling between MIN and MAX "
                                                                  "replicas, TARGET ongoing requests per replica")
    r.add_argument("--gpus-per-replica", type=float, metavar="F", help="GPUs per replica (default 1 on CUDA; "
                                                                       "0.5: two replicas per GPU)")
    r.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to join (default: RAY_ADDRESS, else a "
                                                         "local Ray instance)")


def main(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from kilnrt.cli.args import plan_key, setup_logging
    from kilnrt.errors import ErrorCode, KilnError
    from kilnrt.serve import parse_model_args, serve

    if not args.verbose:   # say which server runs and what it serves, without kilnrt's debug log
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    setup_logging(args.verbose)
    preferred = None
    if args.preferred_batch_sizes:
        try:
            preferred = tuple(int(s) for s in args.preferred_batch_sizes.split(",") if s.strip())
        except ValueError:
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--preferred-batch-sizes {args.preferred_batch_sizes!r}: "
                                                        "write sizes joined by commas, e.g. 16,32") from None
    settings = parse_model_args(args.model, max_batch=args.max_batch, instances=args.instances,
                                dynamic_batching=False if args.no_dynamic_batching else None,
                                max_queue_delay_us=args.max_queue_delay_us, preferred_batch_sizes=preferred,
                                device=args.device, precision=args.precision,
                                pad_batches=False if args.no_pad_batches else None)
    cache = Path(args.timing_cache_dir) if args.timing_cache_dir else Path.home() / ".cache" / "kilnrt" / "serve"
    ray_flags = [f for f, v in (("--replicas", args.replicas), ("--autoscale", args.autoscale),
                                ("--gpus-per-replica", args.gpus_per_replica), ("--ray-address", args.ray_address))
                 if v is not None]
    if not args.ray and ray_flags:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"{', '.join(ray_flags)}: only with --ray (Ray Serve); "
                                                    "without it, scale with --instances")
    if args.ray:
        return _serve_ray(args, settings, cache, plan_key(args))
    serve(settings, backend=args.backend, http_port=args.http_port, grpc_port=args.grpc_port,
          metrics_port=8002 if args.metrics_port is None else args.metrics_port or None, max_request_bytes=args.max_request_bytes, timing_cache_dir=cache,
          plan_key=plan_key(args), access_token=args.access_token)
    return 0


def _serve_ray(args, settings, cache, key) -> int:
    import logging
    import os

    from kilnrt.errors import ErrorCode, KilnError
    from kilnrt.serve.ray_deployment import RayOptions, run_ray

    log = logging.getLogger("kilnrt.serve")
    if args.backend != "auto":
        raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--backend {args.backend} and --ray: Ray Serve is the server "
                                                    "with --ray; drop one of them")
    if args.access_token is not None:
        raise KilnError(ErrorCode.INVALID_ARGUMENT, "--access-token (or KILNRT_SERVE_ACCESS_TOKEN) and --ray: Ray "
                                                    "Serve has none of Triton's restricted APIs; drop the token")
    if args.metrics_port and (args.ray_address or os.environ.get("RAY_ADDRESS")):
        log.warning("--metrics-port with a Ray cluster joined: not used; the cluster's nodes export Ray's "
                    "metrics (kilnrt's included) on their own metrics export port")
    autoscaling = None
    if args.autoscale:
        parts = args.autoscale.split(":")
        try:
            numbers = [int(x) for x in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (2, 3):
            raise KilnError(ErrorCode.INVALID_ARGUMENT, f"--autoscale {args.autoscale!r}: write MIN:MAX or "
                                                        "MIN:MAX:TARGET, e.g. 1:8 or 1:8:16")
        autoscaling = {"min_replicas": numbers[0], "max_replicas": numbers[1]}
        if len(numbers) == 3:
            autoscaling["target_ongoing_requests"] = numbers[2]
    options = RayOptions(replicas=args.replicas, autoscaling=autoscaling, gpus_per_replica=args.gpus_per_replica,
                         max_request_bytes=args.max_request_bytes)
    log.warning("kilnrt serve: Ray Serve (asked for with --ray)")
    run_ray(settings, options, http_port=args.http_port, grpc_port=args.grpc_port,
            metrics_port=args.metrics_port or None, address=args.ray_address, timing_cache_dir=str(cache),
            plan_key=key)
    return 0
