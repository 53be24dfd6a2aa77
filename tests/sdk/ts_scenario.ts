// A user's scenario through the TypeScript client that @hey-api/openapi-ts generates from
// openapi/openapi.json (fetch client, into target/sdk/ts; run by scripts/sdk-ts.sh against a
// live service, after `tsc --noEmit` has type-checked this file against the generated types).
// Every step goes through the generated SDK functions and checks what they hand back: typed
// data on success, the typed Problem (with its `code`) on errors. No hand-written fetch.
// The service has a tokens file: the client is configured with the admin token (`auth` in its
// config; the generated functions carry their operation's `security`, so the client sends
// `Authorization: Bearer <token>`). Then a client without a token gets 401 `unauthorized`, and
// a read-only token scoped to one namespace reads there but gets 403 `forbidden` on a write
// and outside its namespace.
//
// Usage: SDK_TOKEN=<admin token> SDK_READ_TOKEN=<read token> SDK_READ_NS=<its namespace> \
//        tsx ts_scenario.ts <base-url>

import { randomUUID } from 'node:crypto';
import { isDeepStrictEqual } from 'node:util';

import { createClient, createConfig } from 'swarmstate-sdk/client';
import {
  agentRegister,
  agentsList,
  kvDelete,
  kvGet,
  kvList,
  kvPut,
  lockAcquire,
  lockRelease,
  readyz,
  taskAck,
  taskEnqueue,
  taskGet,
  tasksLease,
} from 'swarmstate-sdk';
import type { Entry, KvDeleteError, KvGetErrors, KvPutErrors, Problem } from 'swarmstate-sdk';

function required(value: string | undefined): string {
  if (!value) {
    console.error('usage: SDK_TOKEN=… SDK_READ_TOKEN=… SDK_READ_NS=… ts_scenario.ts <base-url>');
    process.exit(2);
  }
  return value;
}

const base = required(process.argv[2]);
const token = required(process.env.SDK_TOKEN);
const readToken = required(process.env.SDK_READ_TOKEN);
const readNs = required(process.env.SDK_READ_NS);

const client = createClient(createConfig({ baseUrl: base, auth: token }));
// No token at all, a token the service does not know, and the read-only token.
const anonymous = createClient(createConfig({ baseUrl: base }));
const wrong = createClient(createConfig({ baseUrl: base, auth: 'sst_not-a-token' }));
const reader = createClient(createConfig({ baseUrl: base, auth: readToken }));
// Names are unique per run: namespaces, queues, agent ids and capabilities.
const run = randomUUID().replace(/-/g, '').slice(0, 8);
const ns = `sdk-ts-${run}`;
const steps: string[] = [];

class CheckFailed extends Error {}

function check(name: string, cond: boolean, detail: unknown = ''): void {
  steps.push(name);
  if (!cond) {
    throw new CheckFailed(`FAILED ${name}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}`);
  }
  console.log(`ok ${steps.length} ${name}`);
}

/** What a call answered, for failure messages. */
function seen(r: { response: Response; data?: unknown; error?: unknown }): string {
  return `HTTP ${r.response.status} ${JSON.stringify(r.error ?? r.data)}`;
}

async function main(): Promise<void> {
  // Create (201), the ETag is the version.
  const created = await kvPut({
    client,
    path: { ns, key: 'users/1' },
    body: { value: { name: 'ada' } },
    throwOnError: true,
  });
  check('create is 201', created.response.status === 201 && created.data.version === 1, seen(created));
  check('create etag', created.response.headers.get('etag') === '"1"', created.response.headers.get('etag'));

  // Read it back: version in the body, ETag in the headers.
  const read = await kvGet({ client, path: { ns, key: 'users/1' }, throwOnError: true });
  const etag = read.response.headers.get('etag');
  check(
    'read with version and etag',
    read.data.version === 1 && etag === '"1"' && isDeepStrictEqual(read.data.value, { name: 'ada' }),
    seen(read),
  );

  // Compare-and-swap with the ETag just read.
  const cas = await kvPut({
    client,
    path: { ns, key: 'users/1' },
    headers: { 'If-Match': etag ?? '' },
    body: { value: { name: 'ada', n: 2 } },
  });
  check('cas with If-Match is 200', cas.response.status === 200 && cas.data?.version === 2, seen(cas));
  const v1 = await kvGet({ client, path: { ns, key: 'users/1' }, query: { version: 1 }, throwOnError: true });
  check('read version 1', v1.data.version === 1 && isDeepStrictEqual(v1.data.value, { name: 'ada' }), seen(v1));

  // A stale compare-and-swap: the SDK's typed 412 error, its `code` readable from the object.
  const stale = await kvPut({
    client,
    path: { ns, key: 'users/1' },
    headers: { 'If-Match': '"1"' },
    body: { value: {} },
  });
  check('stale cas is 412', stale.response.status === 412 && stale.error !== undefined, seen(stale));
  if (stale.error !== undefined) {
    // The 412 answer is typed: `KvPutErrors[412]` is the Problem document.
    const problem: KvPutErrors[412] = stale.error;
    check('412 code is version_mismatch', problem.code === 'version_mismatch', problem);
    check('412 current_version', problem.current_version === 2, problem);
  }

  // Merge on conflict: a stale If-Match with on_conflict=merge merges into the current value.
  const merged = await kvPut({
    client,
    path: { ns, key: 'users/1' },
    headers: { 'If-Match': '"1"' },
    query: { on_conflict: 'merge' },
    body: { value: { role: 'admin' } },
  });
  check(
    'merge on conflict is 200 with the merged value',
    merged.response.status === 200 &&
      merged.data?.version === 3 &&
      isDeepStrictEqual(merged.data?.value, { name: 'ada', n: 2, role: 'admin' }),
    seen(merged),
  );

  // Prefix listing, two pages of at most 3 keys, following next_cursor; "other" is outside.
  for (let i = 2; i <= 5; i++) {
    await kvPut({ client, path: { ns, key: `users/${i}` }, body: { value: i }, throwOnError: true });
  }
  await kvPut({ client, path: { ns, key: 'other' }, body: { value: null }, throwOnError: true });
  const pages: string[][] = [];
  let cursor: string | undefined;
  do {
    const page = await kvList({
      client,
      path: { ns },
      query: { prefix: 'users/', limit: 3, ...(cursor === undefined ? {} : { cursor }) },
      throwOnError: true,
    });
    pages.push(page.data.items.map((e: Entry) => e.key));
    cursor = page.data.next_cursor ?? undefined;
  } while (cursor !== undefined && pages.length < 10);
  check('first page', isDeepStrictEqual(pages[0], ['users/1', 'users/2', 'users/3']), pages);
  check('second page, last', pages.length === 2 && isDeepStrictEqual(pages[1], ['users/4', 'users/5']), pages);
  const other = await kvGet({ client, path: { ns, key: 'other' } });
  check(
    'key outside the prefix exists, not listed',
    other.response.status === 200 && !pages.flat().includes('other'),
    { other: seen(other), pages },
  );

  // A lock: an older grant's fencing token is stale once the lock is granted again.
  const first = await lockAcquire({
    client,
    path: { ns, name: 'db' },
    body: { owner: 'sdk-ts', ttl_ms: 10000 },
    throwOnError: true,
  });
  check('lock acquired', first.data.fencing_token >= 1, seen(first));
  const released1 = await lockRelease({
    client,
    path: { ns, name: 'db' },
    headers: { 'x-lock-token': first.data.token },
  });
  check('lock released', released1.response.status === 204, seen(released1));
  const lock = await lockAcquire({
    client,
    path: { ns, name: 'db' },
    body: { owner: 'sdk-ts', ttl_ms: 10000 },
    throwOnError: true,
  });
  check('lock acquired again, newer token', lock.data.fencing_token > first.data.fencing_token, seen(lock));
  const fenced = await kvDelete({
    client,
    path: { ns, key: 'users/5' },
    headers: { 'x-fencing-token': `db:${lock.data.fencing_token}` },
  });
  check('fenced delete is 204', fenced.response.status === 204, seen(fenced));
  const gone = await kvGet({ client, path: { ns, key: 'users/5' } });
  check('fenced delete removed the key', gone.response.status === 404 && gone.error?.code === 'not_found', seen(gone));
  const refused = await kvDelete({
    client,
    path: { ns, key: 'users/4' },
    headers: { 'x-fencing-token': `db:${first.data.fencing_token}` },
  });
  // SPEC: kv_delete does not list 409 among its responses (it falls under `default`), so the
  // error is typed by the default Problem rather than by a KvDeleteErrors[409] entry.
  const refusedProblem: KvDeleteError | undefined = refused.error;
  check(
    'stale fencing token is 409 stale_fencing_token',
    refused.response.status === 409 && refusedProblem?.code === 'stale_fencing_token',
    seen(refused),
  );
  const kept = await kvGet({ client, path: { ns, key: 'users/4' } });
  check('refused delete kept the key', kept.response.status === 200, seen(kept));
  const released = await lockRelease({
    client,
    path: { ns, name: 'db' },
    headers: { 'x-lock-token': lock.data.token },
  });
  check('lock released again', released.response.status === 204, seen(released));

  // A task through a queue: enqueue, lease, ack; the task then reads as completed.
  const queue = `${ns}-q`;
  const task = await taskEnqueue({ client, path: { queue }, body: { payload: { job: 1 } }, throwOnError: true });
  check('enqueued (201, ready)', task.response.status === 201 && task.data.state === 'ready', seen(task));
  const leased = await tasksLease({
    client,
    path: { queue },
    body: { worker: 'w1', lease_ms: 10000 },
    throwOnError: true,
  });
  const got = leased.data.tasks[0];
  check(
    'leased',
    leased.data.tasks.length === 1 && got?.id === task.data.id && got.state === 'leased' && !!got.lease_token,
    seen(leased),
  );
  const acked = await taskAck({
    client,
    path: { queue, id: task.data.id },
    body: { lease_token: got?.lease_token ?? '', result: { ok: true } },
  });
  check('acked', acked.response.status === 200 && acked.data?.state === 'completed', seen(acked));
  const after = await taskGet({ client, path: { queue, id: task.data.id }, throwOnError: true });
  check(
    'acked task reads completed with its result',
    after.data.state === 'completed' && isDeepStrictEqual(after.data.result, { ok: true }),
    seen(after),
  );

  // Agents with different capabilities, listed with a capability filter.
  const search = `search-${run}`;
  const a = await agentRegister({ client, path: { id: `${ns}-a` }, body: { capabilities: [search] } });
  const b = await agentRegister({ client, path: { id: `${ns}-b` }, body: { capabilities: [`write-${run}`] } });
  check('agents registered', a.response.ok && b.response.ok, { a: seen(a), b: seen(b) });
  const found = await agentsList({ client, query: { capability: search }, throwOnError: true });
  // Only `items` is read: listings are gaining more fields (next_cursor).
  const ids = found.data.items.map((agent) => agent.id);
  check('agent filter lists only the matching agent', isDeepStrictEqual(ids, [`${ns}-a`]), ids);

  // Authentication. /readyz is public (no `security` on the operation): no token needed.
  const ready = await readyz({ client: anonymous });
  check('public readyz without a token', ready.response.status === 200, seen(ready));
  const noToken = await kvGet({ client: anonymous, path: { ns, key: 'users/1' } });
  check(
    'no token is 401',
    noToken.response.status === 401 && noToken.response.headers.get('www-authenticate')?.startsWith('Bearer') === true,
    seen(noToken),
  );
  if (noToken.error !== undefined) {
    // The 401 answer is typed: `KvGetErrors[401]` is the Problem document.
    const problem: KvGetErrors[401] = noToken.error;
    check('401 code is unauthorized', problem.code === 'unauthorized', problem);
  }
  const unknown = await kvGet({ client: wrong, path: { ns, key: 'users/1' } });
  check(
    'unknown token is 401 unauthorized, invalid_token',
    unknown.response.status === 401 &&
      unknown.error?.code === 'unauthorized' &&
      (unknown.response.headers.get('www-authenticate') ?? '').includes('error="invalid_token"'),
    seen(unknown),
  );

  // A read-only token over one namespace: reads there, 403 forbidden on a write and elsewhere.
  const key = `ts-${run}`;
  await kvPut({ client, path: { ns: readNs, key }, body: { value: { by: 'admin' } }, throwOnError: true });
  const readOk = await kvGet({ client: reader, path: { ns: readNs, key } });
  check(
    'read token reads its namespace',
    readOk.response.status === 200 && isDeepStrictEqual(readOk.data?.value, { by: 'admin' }),
    seen(readOk),
  );
  const write = await kvPut({ client: reader, path: { ns: readNs, key }, body: { value: { by: 'reader' } } });
  check('read token write is 403', write.response.status === 403 && write.error !== undefined, seen(write));
  if (write.error !== undefined) {
    const problem: KvPutErrors[403] = write.error;
    check('403 code is forbidden', problem.code === 'forbidden', problem);
  }
  const unchanged = await kvGet({ client, path: { ns: readNs, key }, throwOnError: true });
  check(
    'refused write left the value',
    unchanged.data.version === 1 && isDeepStrictEqual(unchanged.data.value, { by: 'admin' }),
    seen(unchanged),
  );
  const outside = await kvGet({ client: reader, path: { ns, key: 'users/1' } });
  check(
    'read token outside its namespace is 403 forbidden',
    outside.response.status === 403 && outside.error?.code === 'forbidden',
    seen(outside),
  );

  console.log(`typescript SDK scenario: ${steps.length} checks passed`);
}

main().catch((err: unknown) => {
  if (err instanceof CheckFailed) {
    console.error(err.message);
  } else {
    // throwOnError: true rejects with the parsed error body (a Problem) or a fetch error.
    const problem = err as Partial<Problem> | undefined;
    const what = problem && typeof problem === 'object' && 'code' in problem ? JSON.stringify(problem) : String(err);
    console.error(`FAILED after ${steps.length} checks (${steps.at(-1) ?? 'start'}): unexpected error ${what}`);
    if (err instanceof Error && err.stack) console.error(err.stack);
  }
  process.exit(1);
});
