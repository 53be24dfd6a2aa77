"""schemathesis hooks (SCHEMATHESIS_HOOKS=st_hooks): a fresh Idempotency-Key per call.

Generated cases reuse a few header values across different bodies; the service then answers,
as DESIGN.md says, 422 idempotency_key_reused (a repeat of a key with another body), which
schemathesis would count as a valid request rejected. tests/it/idempotency.rs covers reuse.
"""
import uuid

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = uuid.uuid4().hex
