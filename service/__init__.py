"""Hone control plane: REST API, domain logic, persistence and storage."""
