"""The model, its resident LoRA adapters, and one worker thread that runs every model operation in order.

Generation is a plain decode loop over the KV cache (prefill, then one token at a time). Only the worker
thread touches the model, so adapter loads, evictions and generations never interleave; the asyncio side
waits on futures and per-request event queues, so the event loop never blocks on torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from inference.adapters import (
    AdapterFiles,
    AdapterInvalid,
    ResidentSet,
    ServingProfile,
    inspect_adapter,
)
from inference.generation import (  # the request-level types, kept where no torch is imported
    Delta,
    Failed,
    Finished,
    GenerationJob,
    SamplingParams,
    find_stop,
    model_serving,
)
from inference.metrics import EngineMetrics, cache_config_labels
from inference.sampling import IncrementalDetokenizer, Penalties, sample, token_logprob

if TYPE_CHECKING:
    from hone_kernel.structured import Grammars

log = logging.getLogger("inference.engine")

_END = object()  # the last event of a job's queue


class Engine:
    """Model + tokenizer + adapters, driven only from the worker thread."""

    def __init__(
        self,
        model: str,
        served_model_name: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_loras: int = 1,
        max_cpu_loras: int | None = None,
        max_lora_rank: int = 16,
        chat_template: str | None = None,
        images_per_prompt: int = 10,
    ):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        from hone_kernel.vision import VisionInputs, is_vision_model

        self.model_path = model
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.device = torch.device(
            "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        )
        self.dtype = self._pick_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # transformers declares .to() through functools.wraps(nn.Module.to), whose type loses the bound self
        # A vision model: its processor turns image parts into pixels and token runs (hone_kernel.vision, as training)
        self.vision = VisionInputs(model) if is_vision_model(model) else None
        self.images_per_prompt = images_per_prompt if self.vision else 0
        loader = AutoModelForImageTextToText if self.vision else AutoModelForCausalLM
        loaded = loader.from_pretrained(model, dtype=self.dtype)
        self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        text_config = self.model.config.get_text_config()
        self.max_model_len = max_model_len or int(getattr(text_config, "max_position_embeddings", 0) or 2048)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.defaults, self.base_profile = model_serving(
            Path(model), self.eos_token_id, self.tokenizer.chat_template, chat_template
        )
        self.supported_modules = {
            name.rsplit(".", 1)[-1]
            for name, module in self.model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))
        }
        self.resident = ResidentSet(max(max_loras, max_cpu_loras or max_loras))
        self.peft: Any = None  # PeftModel wrapper, created with the first adapter (its tuner's methods are untyped)
        self.adapter_names: dict[str, str] = {}  # resident-set key -> served name, for the logs
        config = self.model.config
        sliding_window = (
            getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        )
        self.metrics = EngineMetrics(
            served_model_name,
            enable_lora=enable_lora,
            max_loras=max_loras,
            max_model_len=self.max_model_len,
            cache_config=cache_config_labels(sliding_window=sliding_window),
        )
        self._queue: queue.Queue = queue.Queue()
        self._waiting: list[GenerationJob] = []
        self._running: GenerationJob | None = None
        self._state_lock = threading.Lock()
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._work, name="engine-worker", daemon=True)
        self._thread.start()

    # --- setup --------------------------------------------------------------------------------------

    def _pick_dtype(self, dtype: str) -> torch.dtype:
        if dtype == "auto":
            if self.device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

    # --- state seen by the HTTP side ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._dead is None and self._thread.is_alive()

    def _update_gauges(self) -> None:
        with self._state_lock:
            running, waiting = self._running, list(self._waiting)
        self.metrics.queue_state(1 if running else 0, len(waiting))
        self.metrics.lora_state(
            [running.adapter_name] if running and running.adapter_name else [],
            list(dict.fromkeys(j.adapter_name for j in waiting if j.adapter_name)),
        )

    # --- the worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                item()
            except BaseException as e:  # a job's own errors are reported to it; this is a last resort
                log.exception("engine worker job failed")
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    self._dead = repr(e)
                    return

    def stop(self) -> None:
        self._queue.put(None)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Runs `fn` on the worker thread, after everything queued before it."""
        if not self.alive:
            raise RuntimeError("engine worker is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as e:
                future.set_exception(e)

        self._queue.put(run)
        return await asyncio.wrap_future(future)

    async def generate(self, job: GenerationJob) -> AsyncIterator[Delta | Finished | Failed]:
        """Queues `job` and yields its events as the worker produces them. Closing the iterator aborts the job."""
        if not self.alive:
            raise RuntimeError("engine worker is not running")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # loop closed: nobody is listening any more
                job.cancelled.set()

        job.emit = emit
        with self._state_lock:
            self._waiting.append(job)
        self._update_gauges()
        self._queue.put(lambda: self._run_job(job))
        try:
            while True:
                event = await events.get()
                if event is _END:
                    return
                yield event
        finally:
            job.cancelled.set()

    # --- adapters (worker thread only) ---------------------------------------------------------------

    def load_adapter(self, key: str, lora_path: str, name: str | None = None) -> AdapterFiles:
        """Validates the folder and loads its weights under `key` (replacing any weights already under it)."""
        files = inspect_adapter(lora_path, max_rank=self.max_lora_rank, supported_modules=self.supported_modules)
        if name is not None:
            self.adapter_names[key] = name
        if key in self.resident:
            self._evict(key)
        self._make_resident(key, files.folder)
        return files

    def _make_resident(self, key: str, folder: Path) -> None:
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(
                    self.model, str(folder), adapter_name=key, torch_device=str(self.device)
                )
            else:
                self.peft.load_adapter(str(folder), adapter_name=key, torch_device=str(self.device))
        except Exception as e:
            if self.peft is not None and key in self.peft.peft_config:
                self.peft.delete_adapter(key)
            raise AdapterInvalid(f"Loading lora adapter from {folder} failed: {e}") from e
        for old in self.resident.add(key):
            log.info(
                "evicting LoRA weights %s (least recently used)",
                old,
                extra={"adapter": self.adapter_names.get(old, old), "adapter_key": old},
            )
            self.peft.delete_adapter(old)

    def _evict(self, key: str) -> None:
        if key in self.resident:
            self.resident.discard(key)
            self.peft.delete_adapter(key)

    def unload_adapter(self, key: str) -> None:
        self._evict(key)
        self.adapter_names.pop(key, None)

    def _activate(self, job: GenerationJob) -> None:
        if job.adapter_key is None:
            if self.peft is not None:
                self.peft.base_model.disable_adapter_layers()
            return
        if job.adapter_key not in self.resident:
            # Registered but evicted: reload from its path, as vLLM does inside the engine step.
            log.info(
                "reloading evicted LoRA weights", extra={"adapter": job.adapter_name, "adapter_key": job.adapter_key}
            )
            assert job.adapter_path is not None  # set with adapter_key
            files = inspect_adapter(
                job.adapter_path, max_rank=self.max_lora_rank, supported_modules=self.supported_modules
            )
            self._make_resident(job.adapter_key, files.folder)
        self.resident.touch(job.adapter_key)
        self.peft.set_adapter(job.adapter_key)

    def _deactivate(self, job: GenerationJob) -> None:
        if job.adapter_key is None and self.peft is not None:
            self.peft.base_model.enable_adapter_layers()

    # --- generation (worker thread only) -------------------------------------------------------------

    def _run_job(self, job: GenerationJob) -> None:
        with self._state_lock:
            if job in self._waiting:
                self._waiting.remove(job)
            self._running = job
        self._update_gauges()
        # Scheduled now: an evicted adapter's reload below counts as running time, as in vLLM's engine step.
        # The job's sequences run one after another; each later one leaves the queue when the one before ends.
        scheduled = time.monotonic()
        try:
            if job.cancelled.is_set():
                return
            seed = job.params.seed if job.params.seed is not None else random.SystemRandom().getrandbits(63)
            generator = torch.Generator(device=self.device).manual_seed(seed)
            self._activate(job)
            try:
                with torch.inference_mode():
                    for i, prompt in enumerate(job.prompts):
                        for j in range(job.n):
                            self._generate_one(job, i * job.n + j, prompt, generator, scheduled)
                            scheduled = time.monotonic()
                        self.metrics.parent_finished(job.n)
            finally:
                self._deactivate(job)
        except Exception as e:
            log.exception("generation failed")
            self.metrics.finished("error")
            if "CUDA error" in str(e):  # the device is unusable from here on
                self._dead = str(e)
            job.emit(Failed(f"{type(e).__name__}: {e}"))
        finally:
            with self._state_lock:
                self._running = None
            self._update_gauges()
            job.emit(_END)

    def stop_ids(self, profile: ServingProfile, params: SamplingParams) -> set[int]:
        """The tokens that end an answer (vLLM: the tokenizer's EOS, the generation config's or pinned profile's
        stop ids, the request's; ignore_eos keeps only the request's)."""
        if params.ignore_eos:
            return set(params.stop_token_ids)
        eos = {self.eos_token_id} if self.eos_token_id is not None else set()
        return eos | set(params.stop_token_ids) | set(profile.stop_token_ids)

    @functools.cached_property
    def grammars(self) -> Grammars:
        """response_format's grammars (xgrammar is imported on the first request that asks for one)."""
        from hone_kernel.structured import Grammars

        vocab = self.model.get_output_embeddings().weight.shape[0]
        return Grammars(self.tokenizer, int(vocab))

    def _generate_one(
        self, job: GenerationJob, index: int, prompt: list[int], generator: torch.Generator, scheduled: float
    ) -> None:
        params = job.params
        # vLLM: the tokenizer's EOS stops with stop_reason None; other stop ids (generation config / pinned
        # profile / request) stop with stop_reason = the id. ignore_eos drops all but the request's.
        eos = None if params.ignore_eos else self.eos_token_id
        stop_ids = self.stop_ids(job.profile, params) - {eos}
        constraint = None
        if job.grammar is not None:  # response_format: each step's logits masked to the grammar's next tokens
            from hone_kernel.structured import Constraint

            constraint = Constraint(job.grammar)
        holdback = max((len(s) for s in params.stop), default=1) - 1  # never stream a possible stop prefix
        penalties = Penalties(params, prompt) if params.penalized else None
        pending: list = []  # the logprobs of tokens not yet sent
        detok = IncrementalDetokenizer(self.tokenizer, prompt)
        text, sent, output = "", 0, []
        finish: str | None = None
        stop_reason: str | int | None = None
        first = last = None
        past = None
        next_input = torch.tensor([prompt], device=self.device)
        while finish is None:
            if job.cancelled.is_set():
                finish = "abort"
                break
            prefill = past is None
            if prefill:
                self.metrics.scheduled(len(prompt))
            pixels = job.pixel_values.to(self.device, self.dtype) if prefill and job.pixel_values is not None else None
            images = {"pixel_values": pixels} if pixels is not None else {}  # their features fill the image tokens
            out = self.model(input_ids=next_input, past_key_values=past, use_cache=True, **images)
            past = out.past_key_values
            raw = logits = out.logits[0, -1]
            if penalties is not None:
                logits = penalties.apply(logits)
            if constraint is not None:
                logits = constraint.mask(logits)
            token = sample(logits, params, generator)
            if penalties is not None:
                penalties.add(token)
            if params.logprobs is not None and token != eos and token not in stop_ids:  # answer tokens only
                pending.append(token_logprob(raw, token, params.logprobs))
            if constraint is not None:
                constraint.accept(token)
            output.append(token)
            generated = len(output)
            now = time.monotonic()
            self.metrics.step(len(prompt) if prefill else 0)
            if last is None:
                first = now
                self.metrics.ttft.observe(now - job.arrival)
            else:
                self.metrics.itl.observe(now - last)
            last = now
            if token == eos:
                finish = "stop"
            elif token in stop_ids:
                finish, stop_reason = "stop", token
            else:
                piece = detok.add(token)
                text += piece
                hit = find_stop(text, len(piece), params.stop) if piece and params.stop else None
                if hit:
                    stop_reason, text = hit[0], text[: hit[1]]
                    finish = "stop"
                elif generated >= params.max_tokens or len(prompt) + generated >= self.max_model_len:
                    finish = "length"
            if finish is None:
                visible = len(text) - holdback
                if visible > sent:
                    job.emit(Delta(index, text[sent:visible], len(output), pending))
                    sent, pending = visible, []
                next_input = torch.tensor([[token]], device=self.device)
        # Metrics first: a client that has its answer sees them counted.
        self.metrics.request_finished(
            finish,
            arrival=job.arrival,
            scheduled=scheduled,
            first_token=first,
            last_token=last,
            finished=time.monotonic(),
            prompt_tokens=len(prompt),
            generation_tokens=len(output),
            max_tokens=params.max_tokens,
        )
        job.emit(Finished(index, text[sent:], finish, stop_reason, len(prompt), len(output), output, pending))
