"""A FAKE inference engine for control-plane tests: `python -m tests.fake_engine` with `vllm serve`'s flags.

Why a fake: every start of the built-in engine imports torch, transformers and peft and loads a model (seconds
of CPU each), and the control-plane tests start, kill, suspend and restart engines many times over to check what
the CONTROL PLANE does (503 while deploying, restarts, scale to zero and wake, the attempt limit, orphans...).
None of that depends on what the model computes, so those tests point `HONE_ENGINE_PYTHON` at
`tests/fake_engine/python` and get this stand-in, which starts in about a second.

What is real: everything of `inference/` that imports no torch. The routes, the API-key check, request
validation, the LoRA registry and its messages, response and SSE shapes, /tokenize, metrics and the JSON logs
are the built-in engine's own modules (`inference.server`, `handlers`, `models`, `protocol`, `errors`,
`metrics`, `logs`, `adapters`), so the fake cannot drift from the protocol. Adapters are checked by the real
`inference.adapters.inspect_adapter`. Tokens come from the model folder's real tokenizer (`tokenizer.json`,
the `tokenizers` library) and chat templates are rendered with jinja2 as transformers renders them, so the
deployer's parity gate runs for real (a template or tokenizer mismatch still fails it).

What is fake: generation (`tests.fake_engine.engine.FakeEngine`). Nothing is computed: a request is answered
with "answer <digest>", the digest naming the weights that answered (the adapter's tensor file, or "base"),
token by token, then the end-of-text token. Accuracy, sampling and streaming-as-generated are only shown by
the real engine, and tests of those stay on it. `tests/test_engine_protocol.py` runs its protocol checks
against this fake as well as the real engine, so the fake is held to the same contract."""
