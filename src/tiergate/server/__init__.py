"""The ASGI app: routes, auth, streaming, admin API, metrics. Wires the packages together."""
