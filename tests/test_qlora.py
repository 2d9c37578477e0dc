"""QLoRA (tuning_mode "qlora") in the trainer: the 4-bit base (bitsandbytes' CPU backend on hone-tiny), its
checkpoints and exact resume, the adapter on the full-precision base, DPO over it, and the parity gate's stated
tolerance between the quantized training path and the full-precision serving path. (The API's side:
tests/test_qlora_options.py.)"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from hone_kernel.trainer_contract import ExitCode, FileRef, Hyperparameters, TrainSpec
from tests.support import MODEL_CACHE, chat_line, jsonl


def ticket(i: int) -> dict:
    label = ["Billing", "Sales", "Support"][i % 3]
    return chat_line(f"Ticket {i}: please help with my {label.lower()} question", label)


class Recorder:
    """The control-plane channel, recorded; asks the run to stop (as SIGTERM does) after `stop_after` steps."""

    superseded = False
    job_status = "running"

    def __init__(self, stop_after: int | None = None):
        self.metrics: list[dict] = []
        self.checkpoints: list[int] = []
        self.events: list[str] = []
        self.stop_after, self.run, self.final = stop_after, None, None

    def event(self, message, *, type="message", data=None, **_):
        self.events.append(message)
        if type == "metrics":
            self.metrics.append(data)
            if self.stop_after is not None and data["step"] == self.stop_after:
                self.run.request_stop()  # type: ignore[attr-defined]

    def checkpoint(self, step, metrics, prefix):
        self.checkpoints.append(step)

    def progress(self, **_):
        pass

    def flush(self, *_, **__):
        return True

    def call(self, path, body):
        self.final = body
        return {"status": "succeeded"}


def spec(root: Path, *, tuning_mode: str = "qlora", attempt: int = 1, method: str = "supervised", **hp) -> TrainSpec:
    fmt = "openai_preference" if method == "dpo" else "openai_chat"
    return TrainSpec(
        job_id="ftjob-q",
        fine_tuned_model="ft:hone-tiny:p::ftjob-q",
        model_name="hone-tiny",
        model_source="builtin:hone-tiny",
        model_cache_dir=str(MODEL_CACHE),
        storage_url=root.as_uri(),
        training_file=FileRef("data/train.jsonl", fmt),
        validation_file=None,
        method=method,
        hyperparameters=Hyperparameters(
            **{"n_epochs": 2, "batch_size": 4, "learning_rate": 5e-3, "compute_dtype": "float32", **hp},
            tuning_mode=tuning_mode,
        ),
        seed=3,
        output_prefix="jobs/ftjob-q/",
        callback_url="http://127.0.0.1:9",
        token="t",
        attempt=attempt,
        checkpoint_interval_steps=2,
    )


def execute(s: TrainSpec, recorder: Recorder):
    from trainer.blobs import open_blobs
    from trainer.loop import Run

    run = Run(s, open_blobs(s.storage_url), recorder, Path(tempfile.mkdtemp()))  # type: ignore[arg-type]
    recorder.run = run  # type: ignore[assignment]
    return run, run.execute()


def storage(root: Path, rows: list[dict]) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "data/train.jsonl").write_bytes(jsonl(rows))
    return root


def adapter_tensors(root: Path, folder: str = "adapter") -> dict:
    from safetensors.torch import load_file

    return load_file(root / f"jobs/ftjob-q/{folder}/adapter_model.safetensors")


# --- the trainer ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qlora_runs(tmp_path_factory):
    """The same QLoRA job run straight through, and stopped after step 3 then resumed by a second attempt."""
    rows = [ticket(i) for i in range(16)]
    top = tmp_path_factory.mktemp("qlora")
    straight, stopped = storage(top / "straight", rows), storage(top / "stopped", rows)
    first = Recorder()
    run, code = execute(spec(straight), first)
    assert code == ExitCode.OK
    cut = Recorder(stop_after=3)
    _, cut_code = execute(spec(stopped), cut)
    resumed = Recorder()
    _, resumed_code = execute(spec(stopped, attempt=2), resumed)
    return {
        "run": run,
        "straight": (straight, first),
        "cut": (cut_code, cut),
        "resumed": (stopped, resumed_code, resumed),
    }


def test_qlora_trains_over_a_4bit_base(qlora_runs):
    import bitsandbytes as bnb

    run, (root, recorder) = qlora_runs["run"], qlora_runs["straight"]
    layer = run.model.base_model.model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    # double quantization (bitsandbytes' CPU kernels repack the constants for inference once evaluated)
    assert layer.self_attn.q_proj.base_layer.weight.compress_statistics
    assert all(not p.requires_grad for n, p in run.model.named_parameters() if "lora_" not in n)
    losses = [m["train_loss"] for m in recorder.metrics]
    assert len(losses) == 8  # 16 examples / 4 per step x 2 epochs
    assert sum(losses[-2:]) / 2 < 0.6 * sum(losses[:2]) / 2, losses
    assert recorder.final is not None and recorder.final["adapter_prefix"] == "jobs/ftjob-q/adapter/"
    pinned = json.loads((root / "jobs/ftjob-q/adapter/hone_serving.json").read_text())
    assert pinned["tuning_mode"] == "qlora"


def test_qlora_checkpoints_and_resumes_exactly(qlora_runs):
    (straight, first), (cut_code, cut) = qlora_runs["straight"], qlora_runs["cut"]
    stopped, resumed_code, resumed = qlora_runs["resumed"]
    assert first.checkpoints == [2, 4, 6, 8]
    assert cut_code == ExitCode.STOPPED and cut.checkpoints == [2, 3]  # the SIGTERM checkpoint after step 3
    assert resumed_code == ExitCode.OK
    assert "Resumed from checkpoint at step 3 (attempt 2)" in resumed.events
    assert [m["step"] for m in resumed.metrics] == [4, 5, 6, 7, 8]
    # the replayed steps give the same losses, and the same adapter comes out
    assert [m["train_loss"] for m in resumed.metrics] == pytest.approx(
        [m["train_loss"] for m in first.metrics[3:]], rel=1e-5
    )
    a, b = adapter_tensors(straight), adapter_tensors(stopped)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    checkpoint = adapter_tensors(straight, "checkpoints/step-8")
    assert all(torch.equal(checkpoint[k], a[k]) for k in a)


def test_the_qlora_adapter_is_a_plain_lora_adapter_that_loads_on_the_fp32_base(qlora_runs):
    from peft import PeftModel

    from trainer.data import chat_ids
    from trainer.modeling import load_base

    run, (root, _) = qlora_runs["run"], qlora_runs["straight"]
    folder = root / "jobs/ftjob-q/adapter"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "quantization" not in json.dumps(config).lower()
    tensors = adapter_tensors(root)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(".base_layer." not in k for k in tensors)  # named over the unquantized base's modules
    base, tokenizer = load_base("hone-tiny", "builtin:hone-tiny", str(MODEL_CACHE))  # fp32, unquantized
    served = PeftModel.from_pretrained(base, folder)
    ids = torch.tensor([chat_ids(tokenizer, ticket(100)["messages"], None, generation_prompt=False)])
    with torch.no_grad():
        with served.disable_adapter():
            plain = served(ids).logits
        tuned = served(ids).logits
        run.model.eval()
        trained = run.model(ids).logits
    # the adapter does something on the full-precision base, and what it does is near what training saw
    assert (tuned - plain).abs().max() > 1.0
    assert (tuned - trained).abs().max() < 0.25 * (tuned - plain).abs().max()
    assert (tuned[0, -1].argmax() == trained[0, -1].argmax()).item()


def test_qlora_records_greedy_answers_for_the_parity_gate(qlora_runs):
    root, _ = qlora_runs["straight"]
    parity = json.loads((root / "jobs/ftjob-q/adapter/parity_samples.json").read_text())
    greedy = parity["greedy"]
    assert greedy["tuning_mode"] == "qlora" and len(greedy["answers"]) == 8
    answer = greedy["answers"][0]
    assert answer["tokenize"]["add_generation_prompt"] and answer["tokenize"]["messages"][-1]["role"] == "user"
    assert any(a["text"] in ("Billing", "Sales", "Support") for a in greedy["answers"]), greedy
    # a LoRA job's parity rows carry no greedy answers (its serving path computes what training did)
    from trainer.quantization import serving_files

    files = {"parity_samples.json": json.dumps({"samples": []}), "hone_serving.json": "{}"}
    assert serving_files(spec(root, tuning_mode="lora"), None, None, files) is files


def test_dpo_trains_with_qlora_against_the_starting_adapter(tmp_path):
    def pair(i):
        return {
            "input": {"messages": [{"role": "user", "content": f"Question number {i}?"}]},
            "preferred_output": [{"role": "assistant", "content": "Thanks for asking, here it is."}],
            "non_preferred_output": [{"role": "assistant", "content": "no"}],
        }

    root = storage(tmp_path, [pair(i) for i in range(12)])
    recorder = Recorder()
    _, code = execute(spec(root, method="dpo", n_epochs=3, learning_rate=2e-3), recorder)
    assert code == ExitCode.OK
    losses = [m["train_loss"] for m in recorder.metrics]
    assert losses[0] == pytest.approx(0.6931, abs=0.05)  # policy == reference (the 4-bit base) at the start
    assert losses[-1] < 0.5, losses


# --- the parity gate's tolerance: the quantized training path against the full-precision serving path ------------


class PeftEngine:
    """The serving path, in process: the published adapter on the full-precision (fp32) base, answering greedily
    as an engine does; `adapter=False` serves the plain base instead (the wrong weights)."""

    def __init__(self, folder: Path, adapter: bool = True):
        from peft import PeftModel

        from trainer.modeling import load_base

        base, self.tokenizer = load_base("hone-tiny", "builtin:hone-tiny", str(MODEL_CACHE))
        self.model = PeftModel.from_pretrained(base, folder) if adapter else base
        self.model.eval()
        self.stop_ids = json.loads((folder / "hone_serving.json").read_text())["stop_token_ids"]

    def tokenize(self, model, *, messages=None, prompt=None, add_generation_prompt=True, tools=None, **_):
        from trainer.data import chat_ids

        return chat_ids(self.tokenizer, messages, tools, generation_prompt=add_generation_prompt)

    def tokenize_full(self, model, **request):
        return {"tokens": self.tokenize(model, **request)}

    def chat(self, model, messages, *, max_tokens, temperature, **_):
        assert temperature == 0
        ids = torch.tensor([self.tokenize(model, messages=messages)])
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )[0, ids.shape[1] :].tolist()
        stopped = bool(out) and out[-1] in self.stop_ids
        text = self.tokenizer.decode(out[:-1] if stopped else out, skip_special_tokens=True)
        message = {"role": "assistant", "content": text}
        return {
            "choices": [{"message": message, "finish_reason": "stop" if stopped else "length", "stop_reason": None}]
        }


def test_the_parity_gate_passes_the_qlora_model_served_at_full_precision_and_fails_the_wrong_weights(qlora_runs):
    from service.deploy import parity

    root, _ = qlora_runs["straight"]
    folder = root / "jobs/ftjob-q/adapter"
    parity.check(PeftEngine(folder), "ft:q", folder, max_samples=4)  # type: ignore[arg-type]
    with pytest.raises(parity.ParityFailure) as refused:
        parity.check(PeftEngine(folder, adapter=False), "ft:q", folder, max_samples=4)  # type: ignore[arg-type]
    message = str(refused.value)
    assert (
        "trained over the base quantized to 4 bits" in message and f"below the {parity.QLORA_MIN_AGREEMENT}" in message
    )


def test_agreement_is_the_shared_start_of_two_answers():
    from service.deploy.parity import QLORA_MIN_AGREEMENT, agreement

    assert agreement("Billing", "Billing") == 1.0 == agreement("", "")
    assert agreement("Billing", "Sales") == 0.0
    assert agreement("Billing issue", "Billing error") == pytest.approx(8 / 13)
    # one answer of the four checked may differ entirely; two may not
    assert (1 + 1 + 1 + 0) / 4 >= QLORA_MIN_AGREEMENT > (1 + 1 + 0 + 0) / 4


def test_reinforcement_runs_over_the_4bit_base(tmp_path):
    import dataclasses

    from tests.test_rft_core import Recorder as RftRecorder
    from tests.test_rft_core import _run, _spec, prompt

    (tmp_path / "data").mkdir()
    rows = [prompt(f"ticket {i}", label=["Billing", "Sales"][i % 2]) for i in range(8)]
    (tmp_path / "data/train.jsonl").write_bytes(jsonl(rows))
    (tmp_path / "data/valid.jsonl").write_bytes(jsonl(rows[:2]))
    rl = _spec(tmp_path, str(MODEL_CACHE))
    rl.hyperparameters = dataclasses.replace(rl.hyperparameters, tuning_mode="qlora", compute_dtype="float32")
    recorder = RftRecorder()
    assert _run(rl, recorder) == ExitCode.OK
    assert [m["step"] for m in recorder.metrics] == [1, 2, 3, 4]  # sampled, graded and updated over the 4-bit base
    assert all(0.0 <= m["train_reward_mean"] <= 1.0 for m in recorder.metrics)
    assert (tmp_path / "jobs/ftjob-rl/adapter/adapter_model.safetensors").exists()
