"""`FakeEngine`: the part of the built-in engine (`inference.engine.Engine`) that needs torch, faked for
control-plane tests (why, and what stays real: the package docstring). Same attributes and methods as `Engine`,
as `inference.models`, `inference.handlers` and `inference.server` use them; no torch, transformers or peft."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from inference.adapters import (
    TENSOR_FILES,
    AdapterFiles,
    ResidentSet,
    inspect_adapter,
)
from inference.generation import Delta, Failed, Finished, GenerationJob, TokenLogprob, find_stop, model_serving
from inference.metrics import EngineMetrics, cache_config_labels

log = logging.getLogger("inference.engine")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def answer_of(weights: Path | None) -> str:
    """What the fake answers with the adapter in folder `weights` (None: the base weights), for tests to expect."""
    if weights is None:
        return "answer base"
    tensors = next(p for p in (weights / name for name in TENSOR_FILES) if p.is_file())
    return f"answer {hashlib.sha256(tensors.read_bytes()).hexdigest()[:8]}"


def _safetensors_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())


class FakeTokenizer:
    """The model folder's real tokenizer (`tokenizer.json`, read by the `tokenizers` library that transformers'
    fast tokenizers wrap) and its chat template, rendered as transformers' `apply_chat_template` renders it (a
    sandboxed jinja2 environment with trim_blocks, lstrip_blocks, loopcontrols, its `tojson` and
    `raise_exception`). What `inference.handlers` calls, and nothing more."""

    def __init__(self, folder: Path):
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))  # raises when there is no model
        config = _read_json(folder / "tokenizer_config.json")
        template_file = folder / "chat_template.jinja"
        self.chat_template = config.get("chat_template") or (
            template_file.read_text() if template_file.is_file() else None
        )
        self.special_tokens = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        eos = self.special_tokens.get("eos_token")
        self.eos_token_id = self._tokenizer.token_to_id(eos) if eos else None

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        self._jinja = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        self._jinja.filters["tojson"] = tojson
        self._jinja.globals["raise_exception"] = raise_exception

    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        chat_template: str,
        tokenize: bool,
        add_generation_prompt: bool,
        continue_final_message: bool = False,
        tools=None,
        **kwargs,
    ) -> str:
        assert not tokenize  # inference.handlers renders text, then encodes it
        if continue_final_message:
            raise ValueError("the fake engine does not continue final messages")
        return self._jinja.from_string(chat_template).render(
            messages=messages,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **kwargs},
        )

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def decode(self, ids: list[int], skip_special_tokens: bool = True, **_) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self._tokenizer.id_to_token(i) for i in ids]


class FakeEngine:
    """Answers every request with "answer <digest>" (the digest of the weights that answered: the adapter's
    tensor file, else "base"), one token at a time, then the end-of-text token; with `ignore_eos` it repeats
    the answer up to max_tokens. Stop strings, max_tokens and the context limit end it as they end the real one."""

    dtype = "fake"
    device = "cpu"
    vision = None  # reads text only: image parts are refused as the real engine refuses them for a text model
    images_per_prompt = 0

    def __init__(
        self,
        model: str,
        served_model_name: str,
        *,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_loras: int = 1,
        max_cpu_loras: int | None = None,
        max_lora_rank: int = 16,
        chat_template: str | None = None,
    ):
        folder = Path(model)
        self.model_path = model
        self.enable_lora = enable_lora
        self.max_lora_rank = max_lora_rank
        self.tokenizer = FakeTokenizer(folder)
        config = _read_json(folder / "config.json")
        self.max_model_len = max_model_len or int(config.get("max_position_embeddings") or 2048)
        self.eos_token_id = self.tokenizer.eos_token_id
        self.defaults, self.base_profile = model_serving(
            folder, self.eos_token_id, self.tokenizer.chat_template, chat_template
        )  # as the real engine reads the folder
        # The real engine lists the model's Linear and Embedding modules; their weights' names say the same.
        self.supported_modules = {"lm_head"} | {
            name.rsplit(".", 2)[-2]
            for p in sorted(folder.glob("*.safetensors"))
            for name in _safetensors_names(p)
            if name.endswith(".weight") and "norm" not in name
        }
        self.resident = ResidentSet(max(max_loras, max_cpu_loras or max_loras))
        self._answers: dict[str, str] = {}  # resident-set key -> what its weights answer
        self.adapter_names: dict[str, str] = {}  # resident-set key -> served name, for the logs
        self.metrics = EngineMetrics(
            served_model_name,
            enable_lora=enable_lora,
            max_loras=max_loras,
            max_model_len=self.max_model_len,
            cache_config=cache_config_labels(),
        )
        self.alive = True

    def stop(self) -> None:
        self.alive = False

    async def call(self, fn: Callable[[], Any]) -> Any:
        return fn()  # the real engine runs `fn` on its worker thread; nothing here blocks for long

    # --- adapters -----------------------------------------------------------------------------------

    def load_adapter(self, key: str, lora_path: str, name: str | None = None) -> AdapterFiles:
        files = inspect_adapter(lora_path, max_rank=self.max_lora_rank, supported_modules=self.supported_modules)
        if name is not None:
            self.adapter_names[key] = name
        self._make_resident(key, files)
        return files

    def _make_resident(self, key: str, files: AdapterFiles) -> None:
        """ "Weights in memory" are the digest the adapter answers with; least recently used ones are evicted
        beyond --max-cpu-loras, as in the real engine, and reloaded from their path when asked for again."""
        self._answers[key] = answer_of(files.folder)
        for old in self.resident.add(key):
            log.info(
                "evicting LoRA weights %s (least recently used)",
                old,
                extra={"adapter": self.adapter_names.get(old, old), "adapter_key": old},
            )
            self._answers.pop(old, None)

    def unload_adapter(self, key: str) -> None:
        self.resident.discard(key)
        self._answers.pop(key, None)
        self.adapter_names.pop(key, None)

    # --- generation ---------------------------------------------------------------------------------

    def answer(self, job: GenerationJob) -> str:
        if job.adapter_key is None:
            return answer_of(None)
        if job.adapter_key not in self.resident:  # evicted: reloaded from its path, as the real engine does
            assert job.adapter_path is not None  # set with adapter_key
            self._make_resident(
                job.adapter_key,
                inspect_adapter(
                    job.adapter_path, max_rank=self.max_lora_rank, supported_modules=self.supported_modules
                ),
            )
        self.resident.touch(job.adapter_key)
        return self._answers[job.adapter_key]

    async def generate(self, job: GenerationJob) -> AsyncIterator[Delta | Finished | Failed]:
        try:
            answer = self.answer(job)
            # the answer, then the end-of-text token; with ignore_eos, the answer again and again
            reply = self.tokenizer(answer + (" " if job.params.ignore_eos else ""), add_special_tokens=False)[
                "input_ids"
            ]
        except Exception as e:
            yield Failed(f"{type(e).__name__}: {e}")
            return
        for i, prompt in enumerate(job.prompts):
            for j in range(job.n):
                async for event in self._one(job, i * job.n + j, prompt, reply):
                    yield event
            self.metrics.parent_finished(job.n)

    async def _one(
        self, job: GenerationJob, index: int, prompt: list[int], reply: list[int]
    ) -> AsyncIterator[Delta | Finished]:
        params, eos = job.params, None if job.params.ignore_eos else self.eos_token_id
        self.metrics.scheduled(len(prompt))
        text, sent, output, finish, stop_reason = "", 0, [], None, None
        pending: list[TokenLogprob] = []  # a certain model: each answer token at log-probability 0
        started = time.monotonic()
        while finish is None:
            await asyncio.sleep(0)  # lets a dropped stream cancel us between tokens
            at = len(output)
            token = reply[at % len(reply)] if at < len(reply) or eos is None else eos
            output.append(token)
            self.metrics.step(len(prompt) if at == 0 else 0)
            if token == eos:
                finish = "stop"
                break
            if params.logprobs is not None:
                others = tuple(((token + k) % len(self.tokenizer), -9999.0) for k in range(1, params.logprobs))
                pending.append(TokenLogprob(token, 0.0, ((token, 0.0), *others) if params.logprobs else ()))
            piece = self.tokenizer.decode(output)[len(text) :]  # the answer is ASCII: no split characters
            text += piece
            hit = find_stop(text, len(piece), params.stop) if piece and params.stop else None
            if hit:
                stop_reason, text, finish = hit[0], text[: hit[1]], "stop"
            elif len(output) >= params.max_tokens or len(prompt) + len(output) >= self.max_model_len:
                finish = "length"
            else:
                visible = len(text) - (max((len(s) for s in params.stop), default=1) - 1)
                if visible > sent:
                    yield Delta(index, text[sent:visible], len(output), pending)
                    sent, pending = visible, []
        now = time.monotonic()
        self.metrics.request_finished(
            finish,
            arrival=job.arrival,
            scheduled=started,
            first_token=started,
            last_token=now,
            finished=now,
            prompt_tokens=len(prompt),
            generation_tokens=len(output),
            max_tokens=params.max_tokens,
        )
        yield Finished(index, text[sent:], finish, stop_reason, len(prompt), len(output), output, pending)
