"""Hone control plane: REST API, domain logic, persistence and storage."""

__version__ = "0.1.0"
