"""Prometheus metrics of the KServe path (Triton exports its own ``nv_inference_*`` metrics).

Counters and a histogram in prometheus_client's default registry, so they show on the HTTP
port's ``/metrics`` (next to KServe's own) and on ``--metrics-port``."""
from __future__ import annotations

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        existing = getattr(REGISTRY, "_names_to_collectors", {})
        if "kilnrt_inference_requests_total" in existing:      # one set per process
            self.requests = existing["kilnrt_inference_requests_total"]
            self.items = existing["kilnrt_inference_items_total"]
            self.failures = existing["kilnrt_inference_failures_total"]
            self.batches = existing["kilnrt_engine_batch_size"]
            return
        self.requests = Counter("kilnrt_inference_requests", "inference requests accepted", ["model"])
        self.items = Counter("kilnrt_inference_items", "batch items in accepted requests", ["model"])
        self.failures = Counter("kilnrt_inference_failures", "requests refused or failed", ["model", "reason"])
        self.batches = Histogram("kilnrt_engine_batch_size", "batch size of each engine run (after dynamic "
                                 "batching)", ["model"], buckets=BATCH_BUCKETS)

    def request(self, model: str, batch: int) -> None:
        self.requests.labels(model).inc()
        self.items.labels(model).inc(batch)

    def failure(self, model: str, reason: str) -> None:
        self.failures.labels(model, reason).inc()

    def batch(self, model: str, size: int) -> None:
        self.batches.labels(model).observe(size)

    @staticmethod
    def start_http_server(port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port)
