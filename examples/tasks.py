"""Three synthetic tuning tasks of different shape, for measuring what "auto" hyperparameters give.

- `tickets`: 288 short support tickets over six labels (examples/support_tickets.py), 72 held out.
- `small`: the first 40 of those tickets only: a set of the size people start with.
- `triage`: 240 long tickets (the issue buried among two to four unrelated sentences) whose answer is two
  things at once, label and priority ("Billing / high"): long inputs and a multi-token answer. 60 held out.

Each returns (train rows, held-out rows) as OpenAI chat lines; a held-out answer is right when the model's
reply equals the last assistant message exactly."""

from __future__ import annotations

import random

from examples.support_tickets import LABELS, make, ticket

_FILLER = [
    "I have been a customer for many years and usually everything works well.",
    "My manager asked me to write to you about this.",
    "We use the product every day in our office.",
    "I tried to search the help pages before writing.",
    "Our team has twelve people in three cities.",
    "The weather has been terrible this week, but that is not why I write.",
    "I already restarted my computer twice.",
    "Last month we added a new department.",
]
_URGENT = [
    "This blocks our whole team right now.",
    "We need this solved today, it is critical.",
    "Nothing works until this is fixed, please hurry.",
]
_CALM = ["No rush, whenever you have time.", "It is not urgent at all.", "Just curious, take your time."]
TRIAGE_SYSTEM = "Give the ticket's label and priority."


def tickets(seed: int = 7) -> tuple[list[dict], list[dict]]:
    return make(360, seed)


def small(seed: int = 7) -> tuple[list[dict], list[dict]]:
    train, held_out = make(360, seed)
    return train[:40], held_out


def triage(seed: int = 7, count: int = 300) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        urgent = rng.random() < 0.5
        parts = rng.sample(_FILLER, rng.randint(2, 4)) + [ticket(rng, label), rng.choice(_URGENT if urgent else _CALM)]
        rng.shuffle(parts)
        answer = f"{label} / {'high' if urgent else 'low'}"
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": TRIAGE_SYSTEM},
                    {"role": "user", "content": " ".join(parts)},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    cut = int(count * 0.8)
    return rows[:cut], rows[cut:]


TASKS = {"tickets": tickets, "small": small, "triage": triage}
