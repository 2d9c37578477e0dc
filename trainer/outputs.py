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
from trainer.data import parity_samples

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


def result_csv(rows: list[dict]) -> bytes:
    """OpenAI's result file: a row per step, floats to 6 places, blanks where a step has no figure."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                "" if row.get(c) is None else (round(row[c], 6) if isinstance(row[c], float) else row[c])
                for c in RESULT_COLUMNS
            ]
        )
    return out.getvalue().encode()


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
    samples = parity_samples(tokenizer, blobs.iter_lines(ref.key), ref.format, PARITY_ROWS)
    return {"hone_serving.json": json.dumps(pinned, indent=2), "parity_samples.json": json.dumps(samples)}
