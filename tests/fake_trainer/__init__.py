"""A FAKE trainer, for tests of the control plane only: `HONE_TRAINER_PYTHON=tests/fake_trainer/python`.

Why: a real `python -m trainer` spends ~5 s of CPU importing torch, transformers and peft before its first step,
then trains hone-tiny; on the 2-core test machine that was most of the suite's CPU, in tests that only check what
the control plane does with a trainer (state transitions, cancel and stall kills, pause and resume, retries after
crashes, queue order, adoption after a restart, events and metrics). CONTRIBUTING.md: fake only what cannot run
cheaply, behind the same interface, and say so in the test.

What is real: the process (launched by the local executor, in its own session, with its log file), the entry
point (`trainer.__main__.main`: spec reading and contract version check, JSON logs, thread-crash exit, storage
errors, the final flush), the spec (`hone_kernel.trainer_contract.TrainSpec`), storage (`trainer.blobs`, file://
and s3://), the reports, heartbeats and superseded handling (`trainer.reporting.Reporter`), the checkpoint
layout and its commit marker (`trainer.checkpoints`), the exit codes, and SIGTERM => checkpoint and exit 75.

What is fake (`tests/fake_trainer/loop.py`, in place of `trainer.loop`): the model and the steps. No model is
loaded (a base model's source is only checked to exist), a step sleeps `FAKE_TRAINER_STEP_S` seconds (default
0.05) and reports a deterministic loss (a function of seed and step, so a replayed step reports the same), the
"tokens" of an example are its line's words, and checkpoint and adapter files hold stand-ins under the real
names (a peft-shaped adapter_config.json and tiny zero tensors under LoRA's key names). The FAKE engine
(tests/fake_engine) serves such an adapter, as it checks adapters the way vLLM does; no real engine could. Tests
of learning, exact resume, DPO, adapters that serve and the trainer's own storage faults keep the real trainer.
"""
