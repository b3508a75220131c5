"""Routing: prompt -> features -> predicted quality per (model, effort) -> policy choice."""
