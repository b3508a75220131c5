"""Model catalogue: what each model is (prices, limits, capabilities, parameter rules, sources)."""
