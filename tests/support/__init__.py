"""Shared test helpers (import as ``support.<name>``)."""
