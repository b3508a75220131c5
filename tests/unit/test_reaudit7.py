"""Re-audit 7: which upstream 403s are the deployment's own fault (fail over, count against its circuit)
and which are the request's (end it); an over-large answer is never retried nor counted."""

from __future__ import annotations

import pytest

from tiergate.dispatch.retry import counts_against_circuit, deployment_fault, fails_over, retryable
from tiergate.providers.base import UpstreamError
from tiergate.providers.http import ANSWER_TOO_LARGE


@pytest.mark.parametrize("message,etype,code", [
    ("Your chosen model requires moderation and your input was flagged", None, "403"),  # OpenRouter
    ("Forbidden", None, None),
    ("upstream returned HTTP 403", None, None),
    ("Request blocked by content policy", "invalid_request_error", None),
    # words a client controls (hosts and guardrails echo the prompt): never enough to blame the deployment
    ("Blocked: the prompt 'here is my api key, organization and project' was flagged", None, None),
    ("Project `proj_x` does not have access to model `gpt-4o`", "invalid_request_error", None),
    ("You are not allowed to access this organization", None, None),
    ("Your project does not have access to the scale service tier", "invalid_request_error", None),
    ("<html><body><h1>403 Forbidden</h1>nginx</body></html>", None, None),
])
def test_a_403_about_the_request_is_not_the_deployments_fault(message, etype, code):
    e = UpstreamError(403, message, type=etype, code=code)
    assert not deployment_fault(e) and not fails_over(e) and not counts_against_circuit(e)


@pytest.mark.parametrize("message,etype,code", [
    ("Your API key does not have permission to use the specified resource.", "permission_error", None),
    ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    ("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"),
    ("You exceeded your current quota, please check your plan and billing details.", None, "insufficient_quota"),
    # the code decides, whatever the message says
    ("Your access was terminated due to violation of our policies", "invalid_request_error", "access_terminated"),
])
def test_a_403_that_names_the_credentials_is_the_deployments_fault(message, etype, code):
    e = UpstreamError(403, message, type=etype, code=code)
    assert deployment_fault(e) and fails_over(e) and counts_against_circuit(e)


def test_a_401_is_always_the_deployments_fault():
    assert deployment_fault(UpstreamError(401, "Unauthorized"))


def test_an_oversized_answer_is_never_retried_nor_counted():
    e = UpstreamError(502, "too large", kind="protocol", type="api_error", code=ANSWER_TOO_LARGE)
    assert not retryable(e) and not fails_over(e) and not counts_against_circuit(e)
    # other protocol errors still are
    assert retryable(UpstreamError(502, "bad json", kind="protocol", code="upstream_protocol_error"))
