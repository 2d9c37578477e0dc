"""Constrained decoding for `response_format` (hone_kernel/output_format.py): the grammar a format compiles to, by
xgrammar (the grammar library vLLM's structured outputs use), and the per-sequence matcher that masks each step's
logits to the tokens that keep the answer valid. Every answer is a valid prefix whatever the weights would rather
say, and one that ends (finish_reason "stop") parses and validates: from an undertrained model too. A schema whose
strings, numbers and arrays are bounded (enums, maxLength, maximum, maxItems) always ends; free text inside the JSON
(json_object's keys, an unbounded string) ends when the model ends it, or at max_tokens ("length"), as on vLLM.

JSON is written compact (", " and ": " between items, no other whitespace), as vLLM writes it with
`disable_any_whitespace`: with free whitespace an undertrained model spends max_tokens on newlines and tabs inside the
object and the answer never closes (hone-tiny did, with runs of 16 allowed). And no string holds a raw control
character, which JSON forbids: xgrammar's rule for a string with maxLength/minLength allows them (0.2.9), so that
rule's character class is narrowed to its plain strings' before compiling."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import xgrammar as xgr

from hone_kernel.output_format import FormatError, OutputFormat

# xgrammar's character class for a length-bounded string's characters, as its grammar text writes it, and the one its
# plain strings use (control characters out, escapes aside)
_BOUNDED_CHARS = '[^\\"\\\\\\r\\n]'
_JSON_CHARS = '[^\\0-\\x1f\\"\\\\]'
CACHED_GRAMMARS = 64
# xgrammar's errors start with where in its C++ they were raised: "[21:20:52] /project/cpp/x.cc:5088: "
_ORIGIN = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")


class Grammars:
    """The grammars of one tokenizer and vocabulary, compiled once per format and set of stop tokens (the tokens
    that may end an answer once it is complete) and kept in a small LRU cache. Thread-safe."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compilers: dict[tuple[int, ...], xgr.GrammarCompiler] = {}
        self._cache: OrderedDict[tuple, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def _compiler(self, stop_ids: tuple[int, ...]) -> xgr.GrammarCompiler:
        if stop_ids not in self._compilers:
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(stop_ids)
            )
            self._compilers[stop_ids] = xgr.GrammarCompiler(info, max_threads=1)
        return self._compilers[stop_ids]

    def compile(
        self, fmt: OutputFormat, stop_ids: Iterable[int], param: str = "response_format", field: str | None = None
    ) -> xgr.CompiledGrammar:
        """The grammar of `fmt`; FormatError (a 400) for a schema xgrammar cannot enforce, naming `field` (by default
        the schema under `param`, where the request holds its response_format)."""
        stops = tuple(sorted(set(stop_ids)))
        if not stops:
            raise FormatError(f"{param} needs a token that ends the answer; ignore_eos leaves none.", param)
        key = (fmt, stops)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            compiler = self._compiler(stops)
            try:
                # json_object: any object, the schema {"type": "object"} with extra properties allowed
                schema, strict = (
                    ('{"type": "object"}', False) if fmt.kind == "json_object" else (fmt.schema, fmt.strict)
                )
                grammar_text = str(
                    xgr.Grammar.from_json_schema(schema or "{}", any_whitespace=False, strict_mode=strict)
                )
                grammar = compiler.compile_grammar(grammar_text.replace(_BOUNDED_CHARS, _JSON_CHARS))
            except (RuntimeError, ValueError, TypeError) as e:
                detail = _ORIGIN.sub("", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
                field = field or f"{param}.json_schema.schema"
                raise FormatError(f"{field} cannot be enforced: {detail}", field) from e
            self._cache[key] = grammar
            if len(self._cache) > CACHED_GRAMMARS:
                self._cache.popitem(last=False)
            return grammar


class Constraint:
    """One sequence held to a grammar: `mask(logits)` before each sampling step, `accept(token)` after it."""

    def __init__(self, grammar: xgr.CompiledGrammar):
        self.matcher = xgr.GrammarMatcher(grammar)
        self.bitmask = xgr.allocate_token_bitmask(1, grammar.tokenizer_info.vocab_size)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (one row, any float dtype) with every token the grammar forbids at -inf, as float32."""
        row = logits.detach().to(torch.float32).reshape(1, -1).contiguous()
        self.matcher.fill_next_token_bitmask(self.bitmask)
        xgr.apply_token_bitmask_inplace(row, self.bitmask.to(row.device))
        return row[0]

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated():
            self.matcher.accept_token(token)

    @property
    def complete(self) -> bool:
        """The answer is whole: a stop token was accepted after it."""
        return self.matcher.is_terminated()


class BatchConstraint:
    """transformers' generate() logits processor that holds every row of a batch to one grammar (the RFT trainer's
    batched sampling): each call first accepts the token each row sampled last, then masks the next step's scores.
    A row whose answer is complete is left alone (generate pads it from then on)."""

    def __init__(self, grammar: xgr.CompiledGrammar, rows: int):
        self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(rows)]
        self.bitmask = xgr.allocate_token_bitmask(rows, grammar.tokenizer_info.vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.started:
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if not matcher.is_terminated():
                    matcher.accept_token(token)
        self.started = True
        live = [i for i, matcher in enumerate(self.matchers) if not matcher.is_terminated()]
        if not live:
            return scores
        for i in live:
            self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
        masked = scores if scores.dtype == torch.float32 and scores.is_contiguous() else scores.float().contiguous()
        xgr.apply_token_bitmask_inplace(masked, self.bitmask.to(masked.device), indices=live)
        return masked

    @property
    def complete(self) -> list[bool]:
        return [matcher.is_terminated() for matcher in self.matchers]
