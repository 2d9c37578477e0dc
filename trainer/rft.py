"""Reinforcement fine-tuning, GRPO-style: for each prompt of a step, `samples_per_prompt` answers are sampled from
the policy in one batched generation, graded by the job's grader (hone_kernel.graders, the code evals and
`/graders/run` use), and each answer's reward is compared with its group's: advantage = (reward - group mean) /
(group std + eps). The loss raises the log-probability of every answer token in proportion to its advantage, with a
KL penalty (the k3 estimator) towards the weights training started from, and is averaged over all answer tokens
of the step (no length bias towards short or long answers within a step).

One update per generation (on-policy): the importance ratio is exactly 1, so no clipping is needed. Prompts are
rendered with the chat template and the stop tokens the model is served with (hone_serving.json, which the
endpoint's parity gate checks), and answers are decoded as the engine decodes them, so the grader scores the text
a user of the endpoint would get. Sampling is seeded by (job seed, step): a resumed run samples the same answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hone_kernel.dataset_prompts import prompt_messages
from hone_kernel.graders import run as grading
from hone_kernel.graders import spec as grader_spec
from hone_kernel.graders.sandbox import SandboxLimits
from hone_kernel.trainer_contract import Reinforcement
from trainer.batches import micro_batches
from trainer.data import DataError, Example, chat_ids, held_out
from trainer.failures import FatalError
from trainer.modeling import device, token_logprobs

ADVANTAGE_EPS = 1e-4
SAMPLE_CHARS = 500  # of a prompt or answer shown in an event


@dataclass
class Prompt:
    input_ids: list[int]  # the conversation rendered with the generation prompt
    item: dict  # the training line: what graders read as item.*
    text: str  # the last message, for events


@dataclass
class Rollouts:
    """One step's sampled answers: `n` per prompt, in prompt order."""

    prompts: list[Prompt]
    n: int
    answers: list[list[int]] = field(default_factory=list)  # generated ids, the stop token included when hit
    texts: list[str] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)  # the answer ended on a stop token (not cut at the limit)

    def prompt_of(self, i: int) -> Prompt:
        return self.prompts[i // self.n]


def tokenize_prompts(tokenizer, lines: Iterable[bytes], max_prompt_tokens: int) -> tuple[list[Prompt], int]:
    """(prompts, how many were longer than max_prompt_tokens and skipped: a cut prompt would lose its end, which
    is what the model answers)."""
    prompts, skipped = [], 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            messages = prompt_messages(row)
            # As parity_samples renders it: the endpoint's parity gate checks serving gives the same ids.
            ids = chat_ids(tokenizer, messages, row.get("tools"), generation_prompt=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"line {number}: {exc}") from exc
        if len(ids) > max_prompt_tokens:
            skipped += 1
            continue
        prompts.append(Prompt(ids, row, str(messages[-1].get("content", ""))))
    return prompts, skipped


def load_prompts(spec, tokenizer, blobs, reporter, ref, what: str) -> list[Prompt]:
    """A reinforcement job's prompts of one file; FatalError for a file that has none to train on."""
    if ref.format != "openai_reinforcement":
        raise FatalError(
            "unsupported_method", f"The {what} is in the {ref.format} format; reinforcement trains on prompts."
        )
    assert spec.reinforcement is not None  # the control plane writes it for every reinforcement job
    room = spec.max_length - spec.reinforcement.max_completion_tokens
    try:
        prompts, skipped = tokenize_prompts(tokenizer, held_out(blobs.iter_lines(ref.key), ref.exclude_examples), room)
    except DataError as exc:
        raise FatalError(f"invalid_{what.replace(' ', '_')}", f"The {what} could not be tokenized: {exc}") from exc
    if skipped:
        reporter.event(
            f"{skipped} {what} prompt(s) were longer than {room} tokens (max_length less the answer's "
            "max_completion_tokens) and were skipped.",
            level="warn",
            key=f"truncated:{what}",
            data={"dropped": skipped},
        )
    if not prompts:
        raise FatalError(f"invalid_{what.replace(' ', '_')}", f"The {what} has no prompt short enough to answer.")
    return prompts


class StartingWeights:
    """The trainable weights as training started (the base's LoRA-free state, a continued job's parent), for the
    KL penalty. A copy of the trainable tensors only: an adapter's, or all of a fully tuned model's."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.saved = [p.detach().clone() for p in params]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        current = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.saved):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current):
                    p.copy_(c)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[Prompt],
    n: int,
    rl: Reinforcement,
    stop_ids: list[int],
    seed: int,
    grammar: Any = None,
) -> Rollouts:
    """`n` answers per prompt, all in one left-padded batch through the KV cache; with `grammar` (the job's
    response_format compiled), each held to it."""
    from transformers import GenerationConfig, LogitsProcessorList

    model.eval()
    rows = [p.input_ids for p in prompts for _ in range(n)]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device())
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device())
    config = GenerationConfig(
        do_sample=rl.temperature > 0,
        temperature=rl.temperature if rl.temperature > 0 else None,
        top_k=0 if rl.temperature > 0 else None,
        top_p=1.0 if rl.temperature > 0 else None,
        max_new_tokens=rl.max_completion_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad,
    )
    # response_format: every row held to the job's grammar as the engine holds a served answer (hone_kernel/structured)
    constrain = []
    if grammar is not None:
        from hone_kernel.structured import BatchConstraint

        constrain.append(BatchConstraint(grammar, len(rows)))
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids, attention_mask=mask, generation_config=config, logits_processor=LogitsProcessorList(constrain)
    )[:, width:].tolist()
    rollouts = Rollouts(prompts, n)
    stops = set(stop_ids)
    for generated in out:
        answer: list[int] = []
        for token in generated:
            answer.append(token)
            if token in stops:
                break
        rollouts.answers.append(answer)
        rollouts.stopped.append(bool(answer) and answer[-1] in stops)
        text_ids = answer[:-1] if answer and answer[-1] in stops else answer
        # As the engine decodes (inference/engine.py): what the endpoint's user would read is what is graded.
        rollouts.texts.append(tokenizer.decode(text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))
    return rollouts


def grade(parsed, rollouts: Rollouts, make_env) -> list[grading.Grade]:
    """Every answer's grade by the parsed grader; `make_env()` gives the grading environment (made inside the event
    loop that uses it)."""

    async def all_grades() -> list[grading.Grade]:
        env = make_env()
        try:
            return await asyncio.gather(
                *(
                    grading.grade(parsed, grading.sample_from_text(text), rollouts.prompt_of(i).item, env)
                    for i, text in enumerate(rollouts.texts)
                )
            )
        finally:
            if env.models is not None and hasattr(env.models, "aclose"):
                await env.models.aclose()

    return asyncio.run(all_grades())


def advantages(rewards: list[float], n: int) -> list[float]:
    """Each reward against its group's: (r - mean) / (std + eps); a group that all scored alike teaches nothing."""
    out = []
    for start in range(0, len(rewards), n):
        group = rewards[start : start + n]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out += [(r - mean) / (std + ADVANTAGE_EPS) if std > 0 else 0.0 for r in group]
    return out


def _examples(rollouts: Rollouts) -> list[Example]:
    return [
        Example(
            rollouts.prompt_of(i).input_ids + answer,
            [False] * len(rollouts.prompt_of(i).input_ids) + [True] * len(answer),
        )
        for i, answer in enumerate(rollouts.answers)
    ]


def policy_loss(
    model,
    rollouts: Rollouts,
    advantage: list[float],
    beta: float,
    starting: StartingWeights | None,
    token_budget: int,
    pad_id: int,
) -> dict:
    """Backpropagates the step's loss; returns the loss and the mean KL to the starting weights."""
    # Answers cut at max_completion_tokens stay in the loss: leaving them out (DAPO's overlong filtering) left the
    # rambling they are made of as likely as before, and the tickets benchmark gained 4 points instead of 11.
    keep = [i for i, a in enumerate(advantage) if a != 0.0 and rollouts.answers[i]]
    every = _examples(rollouts)
    examples = [every[i] for i in keep]
    tokens = sum(len(rollouts.answers[i]) for i in keep)
    if not examples:
        return {"train_loss": 0.0, "train_kl": 0.0, "trained_answers": 0}
    adv = torch.tensor([advantage[i] for i in keep], device=device())
    model.train()
    loss_total, kl_total, done = 0.0, 0.0, 0
    for mb in micro_batches(examples, packing=False, token_budget=token_budget, pad_id=pad_id):
        rows = mb.input_ids.shape[0]
        use_kl = beta > 0 and starting is not None
        if use_kl:  # first: swapping the weights after the policy's forward pass would void its graph
            assert starting is not None
            with torch.no_grad(), starting.active():
                ref, _ = token_logprobs(model, mb)
        logps, row_of = token_logprobs(model, mb)
        a = adv[done : done + rows][row_of]
        per_token = -a * torch.exp(logps - logps.detach())
        if use_kl:
            delta = ref - logps
            kl = torch.exp(delta) - delta - 1
            per_token = per_token + beta * kl
            kl_total += float(kl.detach().sum())
        # Over every answer token of the step (DAPO's and Dr. GRPO's choice). Each answer's own token mean
        # instead (GRPO's first form) left the tickets benchmark flat: 51% -> 50% and 44%, where this gave +11.
        loss = per_token.sum() / tokens
        loss.backward()
        loss_total += float(loss.detach())
        done += rows
    return {"train_loss": loss_total, "train_kl": kl_total / tokens, "trained_answers": len(keep)}


def reward_metrics(prefix: str, grades: list[grading.Grade], rollouts: Rollouts) -> dict:
    """`{prefix}_reward_mean`, per-grader means (a multi grader's sub-rewards), errors, answer length, and one
    sample (the first prompt's best answer)."""
    rewards = [g.reward for g in grades]
    data: dict = {f"{prefix}_reward_mean": sum(rewards) / len(rewards)}
    subs: dict[str, list[float]] = {}
    for g in grades:
        for name, value in g.sub_rewards.items():
            subs.setdefault(name, []).append(value)
    if subs:
        data[f"{prefix}_grader_scores"] = {name: sum(v) / len(v) for name, v in subs.items()}
    data[f"{prefix}_grader_errors"] = sum(g.failed for g in grades)
    data[f"{prefix}_completion_tokens_mean"] = sum(len(a) for a in rollouts.answers) / len(rollouts.answers)
    best = max(range(rollouts.n), key=lambda i: rewards[i])
    data[f"{prefix}_sample"] = {  # NUL (a byte-level token can decode to it) is refused in any report: U+FFFD
        "prompt": rollouts.prompts[0].text[:SAMPLE_CHARS].replace("\x00", "\ufffd"),
        "output": rollouts.texts[best][:SAMPLE_CHARS].replace("\x00", "\ufffd"),
        "reward": rewards[best],
    }
    return data


class Timer:
    """Seconds spent per phase of a step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def answer_grammar(rl: Reinforcement, tokenizer, model, stop_ids: list[int]) -> Any:
    """The job's response_format compiled for this tokenizer, or None for free text. A schema the grammar library
    cannot enforce fails the job before its first step, naming the field."""
    if rl.response_format is None:
        return None
    from hone_kernel.output_format import FormatError, parse
    from hone_kernel.structured import Grammars

    param = "method.reinforcement.response_format"
    try:
        fmt = parse(rl.response_format, param)
        if fmt is None:
            return None
        vocab = int(model.get_output_embeddings().weight.shape[0])
        return Grammars(tokenizer, vocab).compile(fmt, stop_ids, param)
    except FormatError as e:
        raise FatalError("invalid_response_format", str(e)) from e


class Reinforce:
    """A run's reinforcement method: what the loop calls for a step and for a validation."""

    def __init__(self, spec, tokenizer, model, trainable: list[torch.nn.Parameter], stop_ids: list[int]):
        rl = spec.reinforcement
        if rl is None:
            raise ValueError("a reinforcement job's spec has no 'reinforcement' section")
        self.rl, self.spec, self.tokenizer, self.stop_ids = rl, spec, tokenizer, stop_ids
        self.grader = grader_spec.parse(rl.grader)  # once: a grader this trainer cannot read fails before any step
        # The weights training starts from (after a continued job's parent is loaded, before any checkpoint).
        self.starting = StartingWeights(trainable) if rl.kl_beta > 0 else None
        self.grammar = answer_grammar(rl, tokenizer, model, stop_ids)

    def make_env(self) -> grading.GradingEnv:
        from trainer.model_calls import ControlPlaneModels

        models = ControlPlaneModels(
            self.spec.callback_url, self.spec.token, self.spec.job_id, self.rl.model_call_timeout_s
        )
        return grading.GradingEnv(
            limits=SandboxLimits(**self.rl.sandbox),
            models=models,
            python_slots=asyncio.Semaphore(self.rl.python_processes),
        )

    def _seed(self, step: int, salt: int) -> int:
        return (self.spec.seed * 1_000_003 + step * 7919 + salt) % (2**63)

    def train_step(self, model, prompts: list[Prompt], step: int) -> tuple[dict, int]:
        """(the step's metrics, tokens processed); gradients are left for the loop's optimizer step."""
        timer = Timer()
        with timer.phase("generation"):
            rollouts = sample(
                model,
                self.tokenizer,
                prompts,
                self.rl.samples_per_prompt,
                self.rl,
                self.stop_ids,
                self._seed(step, 0),
                self.grammar,
            )
        with timer.phase("grading"):
            grades = grade(self.grader, rollouts, self.make_env)
        rewards = [g.reward for g in grades]
        with timer.phase("update"):
            losses = policy_loss(
                model,
                rollouts,
                advantages(rewards, rollouts.n),
                self.rl.kl_beta,
                self.starting,
                self.spec.token_budget,
                self.tokenizer.pad_token_id,
            )
        metrics = {**losses, **reward_metrics("train", grades, rollouts)}
        metrics.update({f"{name}_seconds": round(sec, 4) for name, sec in timer.seconds.items()})
        tokens = sum(len(p.input_ids) for p in rollouts.prompts) * rollouts.n + sum(map(len, rollouts.answers))
        return metrics, tokens

    def validate(self, model, prompts: list[Prompt], prefix: str, step: int) -> dict:
        """Reward of `eval_samples` answers per validation prompt, sampled as in training."""
        rollouts = sample(
            model,
            self.tokenizer,
            prompts,
            self.rl.eval_samples,
            self.rl,
            self.stop_ids,
            self._seed(step, 1),
            self.grammar,
        )
        data = reward_metrics(prefix, grade(self.grader, rollouts, self.make_env), rollouts)
        data.pop(f"{prefix}_sample", None)
        return data
