"""Upload a dataset and create a fine-tuning job with the unmodified openai SDK."""

import argparse
import time
from pathlib import Path

from openai import OpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True)
parser.add_argument("--api-key", required=True)
parser.add_argument("--model", default="hone-tiny")
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key=args.api_key)
dataset = Path(__file__).with_name("quickstart.jsonl")
file = client.files.create(file=dataset.open("rb"), purpose="fine-tune")
print(f"uploaded {file.id}: {file.bytes} bytes, status {file.status}, {file.model_extra['dataset']}")

job = client.fine_tuning.jobs.create(model=args.model, training_file=file.id, suffix="quickstart")
print(f"created {job.id}: status {job.status}")
for _ in range(100):
    job = client.fine_tuning.jobs.retrieve(job.id)
    if job.status != "validating_files":
        break
    time.sleep(0.2)
print(f"job {job.id} is {job.status}")
for event in reversed(client.fine_tuning.jobs.list_events(job.id).data):
    print(f"  event: {event.message}")
if job.status != "queued":
    raise SystemExit(f"expected the job to be queued, got {job.status}")
