"""How a run fails on purpose: errors the loop turns into the job's error (FAIL), shared by the methods' modules."""

from __future__ import annotations


class FatalError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Diverged(Exception):
    """A non-finite training loss or gradient norm: every later step (and the adapter) would be NaN, and a
    retry from the last checkpoint would diverge again, so the job fails at once (`training_diverged`)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"the {what} was {value}")
        self.what, self.value = what, value
