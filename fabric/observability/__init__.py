"""Observability: metrics (never carrying values) and structured logs."""
