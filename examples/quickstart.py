"""Upload a dataset, fine-tune hone-tiny on it and read the results, with the unmodified openai SDK."""

import argparse
import base64
import time
from pathlib import Path

from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True)
parser.add_argument("--api-key", required=True)
parser.add_argument("--model", default="hone-tiny")
parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job")
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key=args.api_key)
dataset = Path(__file__).with_name("quickstart.jsonl")
file = client.files.create(file=dataset.open("rb"), purpose="fine-tune")
print(f"uploaded {file.id}: {file.bytes} bytes, status {file.status}, {file.model_extra['dataset']}")

job = client.fine_tuning.jobs.create(model=args.model, training_file=file.id, suffix="quickstart")
print(f"created {job.id}: status {job.status}")
deadline = time.monotonic() + args.timeout
last_step = 0
while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
    time.sleep(0.5)
    job = client.fine_tuning.jobs.retrieve(job.id)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=5).data):
        step = (event.data or {}).get("step", 0) if event.type == "metrics" else 0
        if step > last_step:
            last_step = step
            print(f"  {event.message}")
print(f"job {job.id} is {job.status}; hyperparameters {job.hyperparameters.to_dict()}")
if job.status != "succeeded":
    raise SystemExit(f"expected the job to succeed, got {job.status}: {job.error}")
print(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")
for ckpt in client.fine_tuning.jobs.checkpoints.list(job.id):
    print(f"  checkpoint {ckpt.fine_tuned_model_checkpoint}: train loss {ckpt.metrics.train_loss:.3f}")
result = base64.b64decode(client.files.content(job.result_files[0]).read()).decode().splitlines()
print(f"result file {job.result_files[0]}: {len(result) - 1} steps, last row {result[-1]}")
