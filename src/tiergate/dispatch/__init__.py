"""Dispatch: deployments per model, load balancing, retries, fallbacks, circuit breaking, timeouts."""
