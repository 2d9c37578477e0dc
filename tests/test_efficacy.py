"""Training works, not just runs: hone-tiny learns to label support tickets it has never seen.

The dataset comes from `examples/support_tickets.py` (360 tickets, 6 labels, 80/20 split). The job runs
on the real server and trainer; the adapter it stores is then loaded with peft and decoded greedily."""

from __future__ import annotations

import json

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.support_tickets import LABELS, make
from tests.support import MODEL_CACHE, HoneServer, jsonl, wait_job
from trainer.tiny_model import build


def label_accuracy(model, tokenizer, rows: list[dict]) -> float:
    right = 0
    for row in rows:
        prompt, gold = row["messages"][:-1], row["messages"][-1]["content"]
        inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False)  # the longest label is 10 tokens
        right += tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == gold
    return right / len(rows)


def test_tuned_hone_tiny_labels_held_out_tickets(tmp_path):
    train, held_out = make(count=360, seed=7)
    assert len(train) == 288 and len(held_out) == 72
    assert {r["messages"][-1]["content"] for r in held_out} == set(LABELS)

    server = HoneServer(tmp_path / "srv", {"HONE_LOCAL_SLOTS": "1"})
    try:
        client = server.new_project("tickets").openai()
        file = client.files.create(file=("tickets.jsonl", jsonl(train)), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="hone-tiny", training_file=file.id, seed=1, method={
            "type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 0.5}}})
        done = wait_job(client, job.id, lambda j: j.status == "succeeded", timeout=600)
    finally:
        server.stop()

    adapter = server.data_dir / "blobs" / "jobs" / done.id / "adapter"
    pinned = json.loads((adapter / "hone_serving.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(adapter)  # the tokenizer and template it was trained with
    assert tokenizer.chat_template == pinned["chat_template"]
    base = AutoModelForCausalLM.from_pretrained(build(MODEL_CACHE / "hone-tiny"))
    base_accuracy = label_accuracy(base, tokenizer, held_out)
    tuned_accuracy = label_accuracy(PeftModel.from_pretrained(base, adapter), tokenizer, held_out)
    print(f"held-out label accuracy: base {base_accuracy:.1%}, tuned {tuned_accuracy:.1%}")
    assert base_accuracy < 0.20
    assert tuned_accuracy >= 0.90
