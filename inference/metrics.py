"""Prometheus metrics under vLLM 0.33's names (reference §1.11), in a registry of their own.

Names, types, labels and histogram buckets are vLLM's (`vllm/v1/metrics/loggers.py`), so one dashboard reads
either engine. Request-level series follow vLLM's lifecycle: one "request" is one sequence (vLLM runs each
prompt of a batch, and each of `n` choices, as a request of its own), timed from arrival to being scheduled
(queue), to its first token (prefill), to its last token (decode), then finished.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

# vLLM turns off the `_created` series; scrapers comparing engines see the same families.
prometheus_client.disable_created_metrics()

# vLLM's classic exposition content type (prometheus_client's default names a newer format version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# vLLM's buckets, family by family.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
TOKEN_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)  # inter-token latency, time per output token
REQUEST_LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)  # e2e, queue, inference, prefill, decode
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
N_BUCKETS = (1, 2, 5, 10, 20)

# vLLM's FinishReason values: every one has its request_success series from the start.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")
# vllm:num_requests_waiting_by_reason: "capacity" (no room to run yet) or "deferred" (over the LoRA budget).
WAITING_REASONS = ("capacity", "deferred")


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to `max_value`."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return buckets
            buckets.append(value)
        exponent += 1


def cache_config_labels(*, cache_dtype: str = "auto", sliding_window: int | None = None) -> dict[str, str]:
    """vllm:cache_config_info's labels (vLLM: `str()` of each CacheConfig field) as far as they describe this
    engine: its KV cache grows with each sequence in the model's dtype; it has no paged block pool, no memory
    budget and no prefix cache, so the pool's fields read "None" (as vLLM's do before profiling)."""
    return {
        "block_size": "None",
        "cache_dtype": cache_dtype,
        "enable_prefix_caching": "False",
        "gpu_memory_utilization": "None",
        "kv_cache_memory_bytes": "None",
        "num_cpu_blocks": "None",
        "num_gpu_blocks": "None",
        "num_gpu_blocks_override": "None",
        "sliding_window": str(sliding_window),
    }


class EngineMetrics:
    def __init__(
        self,
        served_model_name: str,
        *,
        enable_lora: bool,
        max_loras: int,
        max_model_len: int = 2048,
        cache_config: dict[str, str] | None = None,
    ):
        self.registry = CollectorRegistry()
        # process_* as vLLM's default registry has them: process_start_time_seconds tells a restart apart
        ProcessCollector(registry=self.registry)
        labels = ["model_name", "engine"]
        values = {"model_name": served_model_name, "engine": "0"}
        self._labels = values
        r = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=r).labels(**values)

        def counter(name, doc):
            return Counter(name, doc, labels, registry=r).labels(**values)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=r).labels(**values)

        token_buckets = build_1_2_5_buckets(max_model_len)

        # Scheduler state
        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting, by reason.",
            [*labels, "reason"],
            registry=r,
        )
        # One generation runs at a time: everything waiting waits for capacity; nothing is deferred for the
        # LoRA budget (any adapter can run once the slot is free).
        self.waiting_capacity = waiting_by_reason.labels(**values, reason="capacity")
        for reason in WAITING_REASONS:
            waiting_by_reason.labels(**values, reason=reason).set(0)
        self.kv_cache_usage = gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage. This engine keeps no pool: always 0.",
        )
        self.kv_cache_usage.set(0)

        # Counters
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens. This engine has no prefix cache: always 0.",
        )
        self.preemptions = counter(
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine. This engine never preempts: always 0.",
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self._success = {reason: success.labels(**values, finished_reason=reason) for reason in FINISH_REASONS}

        # Histograms of counts
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS
        )
        self.params_n = histogram("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", token_buckets
        )

        # Histograms of timing intervals
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TOKEN_LATENCY_BUCKETS
        )
        self.time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

        # LoRA: like vLLM, only with --enable-lora; label values are comma-joined adapter names, value = update time.
        self.max_loras = max_loras
        self._lora_info = (
            Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
                registry=r,
            )
            if enable_lora
            else None
        )

        # Info: a gauge set to 1 whose labels are the cache configuration, plus `engine` (no model_name, as vLLM).
        info = {**(cache_config if cache_config is not None else cache_config_labels()), "engine": "0"}
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", list(info), registry=r).labels(
            **info
        ).set(1)

    # --- the request lifecycle (called by the engine's worker thread) ------------------------------------

    def scheduled(self, prompt_tokens: int) -> None:
        """A sequence's first step: its prompt is looked up in the (absent) prefix cache, every token a miss
        (vLLM counts queries in tokens); vllm:prefix_cache_hits stays 0."""
        self.prefix_cache_queries.inc(prompt_tokens)

    def step(self, prompt_tokens: int, generated: int = 1) -> None:
        """One forward pass (engine step): the prefill step carries the prompt and the first token."""
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generated)
        self.iteration_tokens.observe(prompt_tokens + generated)

    def request_finished(
        self,
        reason: str,
        *,
        arrival: float,
        scheduled: float,
        first_token: float | None,
        last_token: float | None,
        finished: float,
        prompt_tokens: int,
        generation_tokens: int,
        max_tokens: int,
    ) -> None:
        """A sequence is done (any reason): vLLM's FinishedRequestStats, from monotonic timestamps."""
        if first_token is None or last_token is None:  # nothing ran (aborted before its first step)
            first_token = last_token = scheduled
        decode = last_token - first_token
        self._success[reason].inc()
        self.e2e.observe(finished - arrival)
        self.queue_time.observe(scheduled - arrival)
        self.prefill_time.observe(first_token - scheduled)
        self.inference_time.observe(last_token - scheduled)
        self.decode_time.observe(decode)
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generation_tokens)
        # vLLM leaves the first token out: it came with the prefill.
        self.time_per_output_token.observe(decode / (generation_tokens - 1) if generation_tokens > 1 else 0.0)
        if max_tokens:
            self.params_max_tokens.observe(max_tokens)

    def parent_finished(self, n: int) -> None:
        """All `n` choices of one prompt are done (vLLM observes `n` once per parent request)."""
        self.params_n.observe(n)

    def finished(self, reason: str) -> None:
        """A request counted without timings (a failed generation: finished_reason "error")."""
        self._success[reason].inc()

    def queue_state(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)

    def lora_state(self, running: list[str], waiting: list[str]) -> None:
        if self._lora_info is not None:
            self._lora_info.labels(
                max_lora=str(self.max_loras),
                waiting_lora_adapters=",".join(waiting),
                running_lora_adapters=",".join(running),
            ).set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
