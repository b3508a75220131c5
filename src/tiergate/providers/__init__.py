"""Providers: one module per wire protocol behind `providers.base.Provider`."""
