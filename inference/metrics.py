"""Prometheus metrics under vLLM 0.33's names (reference §1.11), in a registry of their own."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# vLLM turns off the `_created` series; scrapers comparing engines see the same families.
prometheus_client.disable_created_metrics()

# vLLM's classic exposition content type (prometheus_client's default names a newer format version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class EngineMetrics:
    def __init__(self, served_model_name: str, *, enable_lora: bool, max_loras: int):
        self.registry = CollectorRegistry()
        labels = ["model_name", "engine"]
        values = {"model_name": served_model_name, "engine": "0"}
        r = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=r).labels(**values)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=r).labels(**values)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(**values)

        self.running = gauge("vllm:num_requests_running", "Number of requests being generated.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be generated.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage (0-1); this engine keeps no pool.")
        self.kv_cache_usage.set(0)
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self._success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                [*labels, "finished_reason"], registry=r)
        self._labels = values
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Time to first token in seconds.",
                              _LATENCY_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Inter-token latency in seconds.", _LATENCY_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.",
                             _LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "Time spent waiting in the queue.",
                                    _LATENCY_BUCKETS)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "Prompt tokens per request.",
                                               _TOKEN_BUCKETS)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "Generation tokens per request.", _TOKEN_BUCKETS)
        self.max_loras = max_loras
        # Like vLLM: only with --enable-lora; label values are comma-joined adapter names, value = update time.
        self._lora_info = Gauge("vllm:lora_requests_info", "Running stats on LoRA requests.",
                                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                                registry=r) if enable_lora else None

    def finished(self, reason: str) -> None:
        self._success.labels(**self._labels, finished_reason=reason).inc()

    def lora_state(self, running: list[str], waiting: list[str]) -> None:
        if self._lora_info is not None:
            self._lora_info.labels(max_lora=str(self.max_loras), waiting_lora_adapters=",".join(waiting),
                                   running_lora_adapters=",".join(running)).set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
