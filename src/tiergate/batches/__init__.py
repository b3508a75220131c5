"""Batches: durable batch jobs run through the gateway's own pipeline (store.py: state and claims;
runner.py: the background worker every replica runs; upstream.py: forwarding to OpenAI's Batch API)."""
