"""Test doubles shared by unit and e2e tests: loopback upstreams that record requests and misbehave on
demand (see `tests.fakes.openai_upstream`)."""
