"""tiergate: one OpenAI-compatible endpoint that routes, prices and dispatches LLM calls."""

__version__ = "0.1.0"
