"""schemathesis hooks (SCHEMATHESIS_HOOKS=st_hooks): a fresh Idempotency-Key per call.

Generated cases reuse a few header values across different bodies; the service then answers,
as DESIGN.md says, 422 idempotency_key_reused (a repeat of a key with another body), which
schemathesis would count as a valid request rejected. tests/it/idempotency.rs covers reuse.

Cases that leave a header out on purpose (e.g. the coverage phase's "missing Authorization",
sent without the -H token) are not touched: an edit to a case's headers makes schemathesis
4.32.5 revalidate them, which looks at declared header parameters only, finds the case valid,
and so sends the Authorization it was meant to go without (then ST203 "missing required header
accepted" for a request that had the token). Such a case is refused anyway (401 or another
4xx), so its key needs no freshening.
"""
import uuid

import schemathesis
from schemathesis.transport.prepare import get_exclude_headers


@schemathesis.hook
def before_call(context, case, kwargs):
    if get_exclude_headers(case):
        return
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key":
            headers[name] = uuid.uuid4().hex
