"""Hone's built-in inference engine: vLLM's OpenAI-compatible HTTP protocol (0.33 semantics) on transformers + peft.

`python -m inference --model DIR --served-model-name NAME --enable-lora ...` takes the same flags as
`vllm serve`, so one launcher (`inference.launcher`) starts either engine and one client
(`inference.client.EngineClient`) drives both. Nothing here imports the control plane or the trainer.
"""

# The vLLM protocol version this engine speaks (reported by GET /version).
VLLM_PROTOCOL_VERSION = "0.33.0"
