"""Dataset validation, for the control plane. The validator itself is hone_kernel.datasets: pure Python on the client
side, so that `hone files validate` runs the very checks an upload gets here."""

from hone_kernel.datasets import (  # noqa: F401 (re-exported)
    DEFAULT_METHODS,
    FORMAT_LABELS,
    METHODS_FOR_FORMAT,
    MIN_TRAINING_EXAMPLES,
    DatasetFormat,
    DatasetReport,
    DatasetValidator,
    LineError,
    detect_format,
    filename_problem,
    methods_for,
    too_few_examples,
    validate_bytes,
)
