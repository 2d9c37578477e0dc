"""Hone client side: the `hone` command line (and, later, the SDK). Light dependencies only."""

__version__ = "0.1.0"
