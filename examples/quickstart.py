"""The whole flow with the unmodified openai SDK: upload a dataset, fine-tune hone-tiny on it, wait for the
tuned model's endpoint, and compare its answers with the base model's on tickets it never saw.

The dataset is the synthetic support-ticket set from examples/support_tickets.py (288 train / 72 held out)."""

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from examples.support_tickets import make  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
parser.add_argument("--api-key", required=True)
parser.add_argument("--model", default="hone-tiny")
parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job and its endpoint")
args = parser.parse_args()

client = OpenAI(base_url=args.base_url, api_key=args.api_key)
train, held_out = make()
data = io.BytesIO("".join(json.dumps(row) + "\n" for row in train).encode())
file = client.files.create(file=("support_tickets.jsonl", data), purpose="fine-tune")
print(f"uploaded {file.id}: {file.bytes} bytes, status {file.status}, {file.model_extra['dataset']}")

# Every hyperparameter left on "auto", as most users do: Hone resolves them from hone-tiny's defaults and the
# dataset, and shows what it chose on the job once it starts.
job = client.fine_tuning.jobs.create(model=args.model, training_file=file.id, suffix="tickets", seed=1)
print(f"created {job.id}: status {job.status}")
deadline = time.monotonic() + args.timeout
last_step = 0
while job.status not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
    time.sleep(1)
    job = client.fine_tuning.jobs.retrieve(job.id)
    for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=5).data):
        step = (event.data or {}).get("step", 0) if event.type == "metrics" else 0
        if step > last_step and (step % 50 == 0 or step == event.data.get("total_steps")):
            print(f"  {event.message}")
        last_step = max(last_step, step)
print(f"job {job.id} is {job.status}; hyperparameters {job.hyperparameters.to_dict()}")
if job.status != "succeeded":
    raise SystemExit(f"expected the job to succeed, got {job.status}: {job.error}")
print(f"fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")
result = base64.b64decode(client.files.content(job.result_files[0]).read()).decode().splitlines()
print(f"result file {job.result_files[0]}: {len(result) - 1} steps, last row {result[-1]}")

# The endpoint was deployed when the job succeeded (a Hone resource: plain HTTP, not in the openai SDK).
hone = httpx.Client(base_url=args.base_url, headers={"Authorization": f"Bearer {args.api_key}"}, timeout=30)
endpoint = {"state": "deploying"}
while time.monotonic() < deadline:
    found = hone.get("/endpoints", params={"model": job.fine_tuned_model}).json()["data"]
    endpoint = found[0] if found else endpoint
    if endpoint["state"] in ("ready", "failed"):
        break
    time.sleep(0.5)
print(f"endpoint {endpoint.get('id')}: {endpoint['state']} {endpoint.get('error') or ''}")
if endpoint["state"] != "ready":
    raise SystemExit("the endpoint did not become ready")


def answer(model: str, row: dict) -> str:
    reply = client.chat.completions.create(model=model, messages=row["messages"][:-1], temperature=0, max_tokens=16)
    return (reply.choices[0].message.content or "").strip()


print(f"\n{'ticket':<60} {'expected':<20} {'base model':<22} tuned model")
right = {"base": 0, "tuned": 0}
for i, row in enumerate(held_out):
    gold = row["messages"][-1]["content"]
    base, tuned = answer(args.model, row), answer(job.fine_tuned_model, row)
    right["base"] += base == gold
    right["tuned"] += tuned == gold
    if i < 8:
        print(f"{row['messages'][1]['content'][:58]:<60} {gold:<20} {base[:20]!r:<22} {tuned!r}")
n = len(held_out)
print(f"\nheld-out accuracy over {n} tickets: base {right['base'] / n:.0%}, tuned {right['tuned'] / n:.0%}")
stream = client.chat.completions.create(
    model=job.fine_tuned_model, messages=held_out[0]["messages"][:-1], temperature=0, max_tokens=16, stream=True
)
print("streamed: " + "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices))
