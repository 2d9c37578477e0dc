"""`hone-tiny`: a tiny Llama model with its own byte-level BPE tokenizer, built locally and deterministically.

No download: the tokenizer is trained on a corpus generated here, the weights come from a fixed seed,
so every machine builds the same bytes and the whole flow runs on a laptop CPU in seconds."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_MODEL = "hone-tiny"
SEED = 1234
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ["<|pad|>", "<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]
BOS, EOS, PAD, IM_END = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_end|>"

# ChatML. Tools, tool calls and content parts are rendered as text so that any OpenAI chat line fits. Each tool is its
# name and its parameters' properties, one a line (the whole JSON of three small tools is ~360 tokens of this
# byte-level vocabulary, more than the examples it comes with; descriptions and `required` are left out). Tool calls are
# Llama 3's JSON calls, `{"name": ..., "arguments": {...}}` separated by "; ": the format engines read back with
# vLLM's llama3_json parser (inference/tool_parsers.py), so a model tuned on calls is served with them.
CHAT_TEMPLATE = (
    "{%- if tools -%}<|im_start|>system{{ '\\n' }}Tools:"
    "{%- for tool in tools -%}{%- set fn = tool.get('function', tool) -%}"
    "{{ '\\n' }}{{ fn['name'] }}{{ (fn.get('parameters') or {}).get('properties', {}) | tojson }}"
    "{%- endfor -%}<|im_end|>{{ '\\n' }}{%- endif -%}"
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- elif message['content'] -%}{%- for part in message['content'] -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- if not loop.first %}; {% endif -%}"
    '{"name": {{ call["function"]["name"] | tojson }}, "arguments": '
    "{%- if call['function']['arguments'] is string %} {{ call['function']['arguments'] }}"
    "{%- else %} {{ call['function']['arguments'] | tojson }}{%- endif -%}"
    "{{ '}' }}"
    "{%- endfor -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

# Tied embeddings make every random hidden state lean towards its own input token, so the untrained model
# predicts "repeat the last token" with confidence: at std 0.1 its first loss was ~17, far above ln(vocab) = 6.9,
# and the first steps were fragile (3 epochs of 288 tickets: 12-28% accuracy). At 0.05 it starts near ln(vocab)
# and still has logits large enough for LoRA to make a token likely (0.02, the usual init, has not).
EMBEDDING_STD = 0.05
# Bumped whenever the builder's output changes: a cached build of another version is rebuilt, not reused.
BUILD_VERSION = "4"
BUILD_MARKER = "hone_tiny_build.txt"
ARCHITECTURE: dict[str, Any] = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    rope_theta=10000.0,
    tie_word_embeddings=True,
)

_WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one have this from or had "
    "by not word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two has "
    "look more day could go come did number sound no most people my over know water than call first who may "
    "down side been now find any new work part take get place made live where after back little only round man "
    "year came show every good me give our under name very through just form sentence great think say help low "
    "line differ turn cause much mean before move right boy old too same tell does set three want air well also "
    "play small end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world near build "
    "self earth father account password login reset invoice payment refund charge card billing error crash bug "
    "page slow broken feature question help support price plan upgrade sales demo trial contract team user "
    "email address profile settings access locked verify code app server data report export import customer "
    "order please thanks hello hi assistant system user model label answer yes no true false null"
).split()


def _corpus(seed: int = SEED, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        tail = rng.choice([".", "?", "!", ",", ":", ";", ""])
        extra = rng.choice(["", f" {rng.randint(0, 9999)}", ' {"key": "value"}', " (x)", " - ", "'s", "\n"])
        out.append(" ".join(words) + tail + extra)
    return out


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )


def _current(target: Path, version: str = BUILD_VERSION) -> bool:
    marker = target / BUILD_MARKER
    return (target / "config.json").exists() and marker.exists() and marker.read_text().strip() == version


def _umask() -> int:
    mask = os.umask(0o077)  # reading it means setting it; 0o077 meanwhile, so nothing made in between is open
    os.umask(mask)
    return mask


def publish(target: Path, version: str, make: Callable[[Path], None]) -> Path:
    """Builds a model into `target` atomically: `make` writes it into a fresh folder beside it, which is renamed
    in, so a half-built folder is never visible; a build of another version is replaced."""
    target = Path(target)
    if _current(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        make(work)
        (work / BUILD_MARKER).write_text(version)
        if target.exists() and not _current(target, version):  # an older build: move it aside, then rename ours in
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
            try:
                os.rename(target, stale / "old")
            except OSError:
                pass  # another process moved it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(work, target)
        except OSError:  # another process finished first; theirs is identical
            if not _current(target, version):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.chmod(target, 0o777 & ~_umask())  # mkdtemp made it 0700: the mode mkdir gives (0700 under `hone serve`)
    return target


def text_config(tokenizer, **overrides: Any):
    """hone-tiny's Llama configuration for `tokenizer` (hone-tiny-vision's language model is the same)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
        **(ARCHITECTURE | overrides),
    )


def spread_embeddings(model) -> None:
    """The (tied) embeddings bound every logit; at the default 0.02 std no hidden state can make a token likely,
    and LoRA cannot train them. Pretrained models have norms like this one."""
    import torch

    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)  # an embedding's weight (a Parameter), not a submodule
    weight.data.normal_(0.0, EMBEDDING_STD)


def generation_config(config):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )


def build(target: Path, seed: int = SEED) -> Path:
    """Writes hone-tiny into `target` (atomically: a half-built folder is never visible)."""
    if _current(Path(target)):  # before importing torch: the control plane runs this before every engine start
        return Path(target)

    def make(work: Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        tokenizer = build_tokenizer()
        config = text_config(tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
            spread_embeddings(model)
        model.generation_config = generation_config(config)
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)

    return publish(target, BUILD_VERSION, make)


if __name__ == "__main__":  # `python -m hone_kernel.tiny_model DIR`: how the control plane builds it for serving
    import sys

    print(build(Path(sys.argv[1])))
