"""What Hone's deployables truly share, and nothing else: the trainer contract (trainer_contract), the dataset
rules (datasets, dataset_checks, dataset_lines), the JSON log line (jsonlog), finite numbers in JSON (finite) and
hone-tiny's builder (tiny_model).

The control plane (service/), the trainer (trainer/), the engine (inference/) and the SDK (hone/) import from here
and never from each other. Standard library only, except tiny_model, which imports torch and transformers when
it builds.
"""
