"""Chaos tests: the server under faults, hostile load and long runs."""
