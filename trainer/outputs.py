"""What a run publishes beside the weights: result.csv (its metrics, step by step) and the serving files an
endpoint needs to serve exactly as training saw the data. No torch: the fake trainer of the tests writes the same
files with this code."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from typing import Any

from hone_kernel.trainer_contract import TrainSpec
from trainer.blobs import Blobs
from trainer.data import lines_of, parity_samples

PARITY_ROWS = 8  # training rows published for the endpoint's parity gate

RESULT_COLUMNS = [
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
]


# A reinforcement run's: its rewards instead of losses and token accuracies.
REWARD_COLUMNS = [
    "step",
    "train_loss",
    "train_reward_mean",
    "train_kl",
    "valid_reward_mean",
    "full_valid_reward_mean",
]


def result_row(step: int, metrics: dict) -> dict:
    """One step's row of result.csv, from the step's metrics event."""
    row: dict[str, float] = {"step": step}
    for key, value in metrics.items():
        if key not in ("step", "total_steps") and isinstance(value, (int, float)) and not isinstance(value, bool):
            row["train_accuracy" if key == "train_mean_token_accuracy" else key] = value
    return row


def result_csv(rows: list[dict]) -> bytes:
    """OpenAI's result file: a row per step, floats to 6 places, blanks where a step has no figure."""
    columns = REWARD_COLUMNS if any("train_reward_mean" in row for row in rows) else RESULT_COLUMNS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            ["" if row.get(c) is None else (round(row[c], 6) if isinstance(row[c], float) else row[c]) for c in columns]
        )
    return out.getvalue().encode()


def stop_token_ids(files: dict[str, str]) -> list[int]:
    """The stop tokens the model is served with (hone_serving.json): generation in training stops where serving does."""
    return list(json.loads(files["hone_serving.json"])["stop_token_ids"])


def serving_files(spec: TrainSpec, tokenizer: Any, model: Any, blobs: Blobs) -> dict[str, str]:
    """The pinned chat template and stop tokens (hone_serving.json) and rows to check that against
    (parity_samples.json)."""
    template = tokenizer.chat_template or ""
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos_ids = eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id]
    pinned = {
        "base_model": spec.model_name,
        "tuning_mode": spec.hyperparameters.tuning_mode,
        "chat_template": template,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
        "stop_token_ids": eos_ids,
        "stop_tokens": tokenizer.convert_ids_to_tokens(eos_ids),
        "max_length": spec.max_length,
    }
    ref = spec.training_file
    samples = parity_samples(tokenizer, lines_of(blobs, ref), ref.format, PARITY_ROWS)
    return {"hone_serving.json": json.dumps(pinned, indent=2), "parity_samples.json": json.dumps(samples)}
