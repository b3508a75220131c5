"""Accounting: token counting, pricing, spend ledger, budgets with reservations, rate limits."""
