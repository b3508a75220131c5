"""OpenAI wire format: error bodies, SSE framing, ids. Pure functions, no I/O."""
