"""A user's scenario through the Python client that openapi-python-client generates from
openapi/openapi.json (run by scripts/sdk-tests.sh against a live service with a tokens file).
Every step checks what the SDK hands back: typed models on success, the typed Problem with its
`code` on errors. The scenario runs with the generated AuthenticatedClient and an admin token;
then a plain Client (no token) gets 401 `unauthorized`, and a read-only token scoped to one
namespace reads there but gets 403 `forbidden` on a write and outside its namespace.

Usage: SDK_TOKEN=<admin token> SDK_READ_TOKEN=<read token> SDK_READ_NS=<its namespace>
       python_scenario.py <base-url>
"""

import io
import os
import sys
import time
import uuid

from swarmstate_client import AuthenticatedClient, Client
from swarmstate_client.api.agents import agent_register, agents_list
from swarmstate_client.api.backups import (
    backup_create,
    backup_delete,
    backup_download,
    backup_get,
    backup_restore,
    backup_upload,
    backup_verify,
    backups_list,
)
from swarmstate_client.api.kv import kv_delete, kv_get, kv_list, kv_put
from swarmstate_client.api.locks import lock_acquire, lock_release
from swarmstate_client.api.ops import readyz
from swarmstate_client.api.queues import task_ack, task_enqueue, tasks_lease
from swarmstate_client.models import (
    AcquireBody,
    AckBody,
    BackupStatus,
    CreateBackup,
    EnqueueBody,
    LeaseBody,
    OnConflict,
    Problem,
    PutBody,
    RegisterBody,
    RestoreBody,
    RestoreModeIn,
)
from swarmstate_client.types import File

base = sys.argv[1]
token, read_token, read_ns = (os.environ[v] for v in ("SDK_TOKEN", "SDK_READ_TOKEN", "SDK_READ_NS"))
client = AuthenticatedClient(base_url=base, token=token, raise_on_unexpected_status=True)
ns = "sdk-" + uuid.uuid4().hex[:8]
steps = []


def check(name, cond, detail=""):
    steps.append(name)
    if not cond:
        raise SystemExit(f"FAILED {name}: {detail}")


# Create, then read a given version.
r = kv_put.sync_detailed(ns, "users/1", client=client, body=PutBody(value={"name": "ada"}))
check("create", r.status_code == 201 and r.parsed.version == 1, r.content)
check("etag", r.headers.get("etag") == '"1"', r.headers)
r = kv_put.sync_detailed(ns, "users/1", client=client, body=PutBody(value={"name": "ada", "n": 2}), if_match='"1"')
check("cas success", r.status_code == 200 and r.parsed.version == 2, r.content)
got = kv_get.sync(ns, "users/1", client=client, version=1)
check("read version 1", got.version == 1 and got.value == {"name": "ada"}, got)

# A stale compare-and-swap: the SDK's typed 412 with a readable code.
r = kv_put.sync_detailed(ns, "users/1", client=client, body=PutBody(value={}), if_match='"1"')
check("stale cas is 412", r.status_code == 412 and isinstance(r.parsed, Problem), r.content)
check("problem code", r.parsed.code.value == "version_mismatch", r.parsed)

# Merge on conflict.
r = kv_put.sync_detailed(
    ns, "users/1", client=client, body=PutBody(value={"role": "admin"}), if_match='"1"',
    on_conflict=OnConflict.MERGE,
)
check("merge on conflict", r.status_code == 200 and r.parsed.value == {"name": "ada", "n": 2, "role": "admin"}, r.content)

# Prefix listing with a cursor.
for i in range(2, 6):
    kv_put.sync(ns, f"users/{i}", client=client, body=PutBody(value=i))
kv_put.sync(ns, "other", client=client, body=PutBody(value=None))
page = kv_list.sync(ns, client=client, prefix="users/", limit=3)
check("first page", [e.key for e in page.items] == ["users/1", "users/2", "users/3"], page)
check("cursor given", isinstance(page.next_cursor, str), page)
page2 = kv_list.sync(ns, client=client, prefix="users/", limit=3, cursor=page.next_cursor)
check("second page", [e.key for e in page2.items] == ["users/4", "users/5"] and page2.next_cursor is None, page2)

# A lock, and a delete fenced by its token.
g = lock_acquire.sync(ns, "db", client=client, body=AcquireBody(owner="sdk", ttl_ms=10000))
check("lock acquired", g.fencing_token >= 1, g)
r = kv_delete.sync_detailed(ns, "users/5", client=client, x_fencing_token=f"db:{g.fencing_token}")
check("fenced delete", r.status_code == 204, r.content)
r = kv_delete.sync_detailed(ns, "users/4", client=client, x_fencing_token=f"db:{g.fencing_token + 1}")
check("stale fencing token", r.status_code == 409 and r.parsed.code.value == "stale_fencing_token", r.content)
r = lock_release.sync_detailed(ns, "db", client=client, x_lock_token=g.token)
check("lock released", r.status_code == 204, r.content)

# A task through a queue.
q = ns
t = task_enqueue.sync(q, client=client, body=EnqueueBody(payload={"job": 1}))
check("enqueued", t.state == "ready", t)
leased = tasks_lease.sync(q, client=client, body=LeaseBody(worker="w1", lease_ms=10000))
check("leased", len(leased.tasks) == 1 and leased.tasks[0].id == t.id, leased)
done = task_ack.sync(q, leased.tasks[0].id, client=client, body=AckBody(lease_token=leased.tasks[0].lease_token, result=None))
check("acked", done.state == "completed", done)

# Agents, listed with a capability filter.
agent_register.sync(ns + "-a", client=client, body=RegisterBody(capabilities=["search"]))
agent_register.sync(ns + "-b", client=client, body=RegisterBody(capabilities=["write"]))
found = agents_list.sync(client=client, capability="search")
ids = [a.id for a in found.items]
check("agent filter", ns + "-a" in ids and ns + "-b" not in ids, ids)

# A backup of the namespace: started (202), polled to succeeded, downloaded, verified; a
# deleted key brought back by a merge restore (after a dry run); a tampered copy uploaded is
# refused by verify and restore with 422 backup_tampered.
started = backup_create.sync(client=client, body=CreateBackup(namespaces=[ns]))
check("backup started", started.status == BackupStatus.RUNNING, started)
deadline = time.time() + 30
info = started
while info.status == BackupStatus.RUNNING and time.time() < deadline:
    time.sleep(0.1)
    info = backup_get.sync(started.id, client=client)
check("backup succeeded", info.status == BackupStatus.SUCCEEDED and info.namespaces[0].namespace == ns, info)
check("backup holds the namespace's entries", info.namespaces[0].entries == 5, info.namespaces)
listed = backups_list.sync(client=client)
check("backup listed", started.id in [b.id for b in listed.items], listed)
r = backup_download.sync_detailed(started.id, client=client)
data = r.content
check("download is the file", r.status_code == 200 and data[:8] == b"SWSBAK01" and len(data) == info.size_bytes, r.headers)
v = backup_verify.sync(started.id, client=client)
check("verify", v.ok and v.sha256 == info.sha256, v)
kv_delete.sync_detailed(ns, "users/1", client=client)
s = backup_restore.sync(started.id, client=client, body=RestoreBody(mode=RestoreModeIn.MERGE, dry_run=True))
check("dry run counts the deleted key", s.dry_run and s.restored == 1, s)
r = kv_get.sync_detailed(ns, "users/1", client=client)
check("dry run wrote nothing", r.status_code == 404, r.content)
s = backup_restore.sync(started.id, client=client, body=RestoreBody(mode=RestoreModeIn.MERGE))
check("merge restore", s.restored == 1 and s.deleted == 0, s)
got = kv_get.sync(ns, "users/1", client=client)
check("restored value", got.value == {"name": "ada", "n": 2, "role": "admin"}, got)
bad = bytearray(data)
bad[len(bad) // 2] ^= 1
up = backup_upload.sync(client=client, body=File(payload=io.BytesIO(bytes(bad)), mime_type="application/octet-stream"))
check("upload registered", up.origin.value == "upload" and up.size_bytes == len(data), up)
r = backup_verify.sync_detailed(up.id, client=client)
check("tampered upload is 422", r.status_code == 422 and r.parsed.code.value == "backup_tampered", r.content)
r = backup_restore.sync_detailed(up.id, client=client, body=RestoreBody(mode=RestoreModeIn.REPLACE))
check("tampered restore is 422", r.status_code == 422 and r.parsed.code.value == "backup_tampered", r.content)
for i in (started.id, up.id):
    r = backup_delete.sync_detailed(i, client=client)
    check("backup deleted", r.status_code == 204, r.content)
r = backup_get.sync_detailed(started.id, client=client)
check("deleted backup is 404", r.status_code == 404 and r.parsed.code.value == "not_found", r.content)

# Authentication. /readyz is public: a Client without a token reads it.
anonymous = Client(base_url=base, raise_on_unexpected_status=True)
r = readyz.sync_detailed(client=anonymous)
check("public readyz without a token", r.status_code == 200, r.content)
# The generated functions of protected operations are typed for AuthenticatedClient; a plain
# Client (no Authorization header) is what a caller without a token sends.
r = kv_get.sync_detailed(ns, "users/1", client=anonymous)  # type: ignore[arg-type]
check("no token is 401", r.status_code == 401 and isinstance(r.parsed, Problem), r.content)
check("401 code is unauthorized", r.parsed.code.value == "unauthorized", r.parsed)
check("401 challenge", r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers)
wrong = AuthenticatedClient(base_url=base, token="sst_not-a-token", raise_on_unexpected_status=True)
r = kv_get.sync_detailed(ns, "users/1", client=wrong)
check("unknown token is 401 unauthorized", r.status_code == 401 and r.parsed.code.value == "unauthorized", r.content)
check("unknown token challenge", 'error="invalid_token"' in r.headers.get("www-authenticate", ""), r.headers)

# A read-only token over one namespace: reads there, 403 forbidden on a write and elsewhere.
reader = AuthenticatedClient(base_url=base, token=read_token, raise_on_unexpected_status=True)
key = "py-" + uuid.uuid4().hex[:8]
kv_put.sync(read_ns, key, client=client, body=PutBody(value={"by": "admin"}))
got = kv_get.sync(read_ns, key, client=reader)
check("read token reads its namespace", got.value == {"by": "admin"}, got)
r = kv_put.sync_detailed(read_ns, key, client=reader, body=PutBody(value={"by": "reader"}))
check("read token write is 403", r.status_code == 403 and isinstance(r.parsed, Problem), r.content)
check("403 code is forbidden", r.parsed.code.value == "forbidden", r.parsed)
got = kv_get.sync(read_ns, key, client=client)
check("refused write left the value", got.version == 1 and got.value == {"by": "admin"}, got)
r = kv_get.sync_detailed(ns, "users/1", client=reader)
check("read token outside its namespace is 403 forbidden", r.status_code == 403 and r.parsed.code.value == "forbidden", r.content)

print(f"python SDK scenario: {len(steps)} checks passed ({', '.join(steps)})")
