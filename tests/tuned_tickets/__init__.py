"""The tests of one tuned model (conftest.py trains it once for both modules), and what they share."""

from __future__ import annotations

from tests.support import jsonl

BUCKET = "hone-serve"
SHARED_ENGINE = "base:hone-tiny"  # the engine key of the one engine the package's models share
# The best explicit setting on the tickets (README, "auto" hyperparameters: 97.2% on the worst of five seeds).
SFT = {"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 0.5, "lora_rank": 16}


def upload(client, rows: list[dict], name: str) -> str:
    return client.files.create(file=(name, jsonl(rows)), purpose="fine-tune").id


def label_accuracy(client, model: str, rows: list[dict]) -> float:
    """Share of held-out tickets the model labels exactly, asked through the gateway (greedy)."""
    right = 0
    for row in rows:
        reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], temperature=0, max_tokens=16)
        right += reply.choices[0].message.content.strip() == row["messages"][-1]["content"]
    return right / len(rows)
