"""Anthropic Message Batches behind plain AWS messaging: the domain package shared by every function."""

__version__ = "0.1.0"
