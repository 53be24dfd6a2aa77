// The dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// against a live service with a real redis-server and a tokens file (scripts/browser-tests.sh).
// Every check is what a person sees on the page; state is set up and verified through the
// public API, as another client would.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const require = createRequire(path.join(process.env.DASHBOARD_NODE_MODULES, 'x.js'));
const { chromium } = require('playwright-core');
const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const BASE = process.env.DASHBOARD_URL;
const TOKEN = process.env.DASHBOARD_TOKEN;
const READ_TOKEN = process.env.DASHBOARD_READ_TOKEN;
const SHOTS = process.env.DASHBOARD_SHOTS;
const SIZES = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
});

after(async () => {
  await browser?.close();
});

/** The API as a script would use it. */
async function api(method, p, body, headers = {}) {
  const res = await fetch(BASE + p, {
    method,
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

/**
 * A fresh tab. `withToken` puts the token in sessionStorage first, as if it had been asked for
 * once already in this tab. Console errors and uncaught exceptions are collected in `errors`.
 */
async function open({ withToken = TOKEN, size = SIZES.desktop, colorScheme = 'light', bypassCSP = false } = {}) {
  const context = await browser.newContext({ viewport: size, colorScheme, bypassCSP });
  if (withToken) {
    await context.addInitScript((t) => sessionStorage.setItem('swarmstate.token', t), withToken);
  }
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(`uncaught: ${e.message}`));
  return { page, context, errors };
}

async function live(page) {
  await page.waitForSelector('#live-status[data-state="live"]', { timeout: 10000 });
}

test('asks for the token once, then the overview renders with no console errors', async () => {
  const { page, context, errors } = await open({ withToken: null });
  await api('PUT', '/v1/ns/overview-ns/kv/hello', { value: { hi: 1 } });
  await page.goto(BASE + '/');
  await page.waitForSelector('#token-dialog[open]');
  await page.fill('#token-input', TOKEN);
  await page.click('#token-save');
  await page.waitForSelector('h1:text("Overview")');
  await page.waitForSelector('h2:has-text("Redis") .pill.ok:text("ready")');
  await page.waitForSelector('a[href="#/ns/overview-ns"]');
  await live(page);
  // Live rates come from `stats` frames on the socket: two frames make the first rate.
  await page.waitForFunction(() => /^\d+\.\d$/.test(document.querySelector('#rate-requests')?.textContent || ''), null, { timeout: 5000 });
  // The token stays for the tab: a reload does not ask again.
  await page.reload();
  await page.waitForSelector('h2:has-text("Redis") .pill.ok:text("ready")');
  assert.equal(await page.isVisible('#token-dialog[open]'), false, 'no token prompt after a reload');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('swarmstate.token')), TOKEN);
  assert.deepEqual(errors, [], 'no console errors');
  await context.close();
});

test('a refused token and a token without scope show the problem, never a blank page', async () => {
  const { page, context } = await open({ withToken: 'not-a-token' });
  await page.goto(BASE + '/#/queues');
  await page.waitForSelector('#token-dialog[open]');
  assert.match(await page.textContent('#token-why'), /refused/);
  await context.close();

  const r = await open({ withToken: READ_TOKEN });
  await r.page.goto(BASE + '/');
  // The read-only token covers one namespace: the service-wide panels show 403 and its detail.
  const problem = await r.page.waitForSelector('.problem:has-text("403")');
  assert.match(await problem.textContent(), /forbidden/i);
  // A write it may not make is refused with the problem shown, and nothing is thrown.
  const ns = process.env.DASHBOARD_READ_NS;
  assert.equal((await api('PUT', `/v1/ns/${ns}/kv/doc`, { value: 1 })).status, 201);
  await r.page.goto(BASE + `/#/ns/${ns}?key=doc`);
  await r.page.waitForSelector('#entry-version:text("1")');
  await r.page.click('#delete');
  await r.page.click('#confirm-ok');
  await r.page.waitForSelector('.toast.bad:has-text("403")');
  assert.equal((await api('GET', `/v1/ns/${ns}/kv/doc`)).status, 200, 'nothing deleted');
  assert.deepEqual(r.errors.filter((e) => e.startsWith('uncaught')), [], 'no uncaught exceptions');
  await r.context.close();
});

test('a key written through the API appears in the live tail within 1 s', async () => {
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/ns/tail-ns');
  await page.waitForSelector('#tail-status:has-text("live")');
  await live(page);
  const t0 = Date.now();
  const w = await api('PUT', '/v1/ns/tail-ns/kv/jobs%2Fone', { value: { n: 1 } }, { 'x-agent-id': 'planner-7' });
  assert.equal(w.status, 201);
  const item = await page.waitForSelector('#tail li[data-key="jobs/one"]', { timeout: 1000 });
  const took = Date.now() - t0;
  assert.ok(took <= 1000, `tail showed the write after ${took} ms`);
  assert.match(await item.textContent(), /planner-7/);
  // Pause, miss two writes, resume: they arrive from the last revision seen, in order.
  await page.click('#tail-pause');
  await page.waitForSelector('#tail-status:has-text("paused")');
  await api('PUT', '/v1/ns/tail-ns/kv/two', { value: 2 });
  await api('DELETE', '/v1/ns/tail-ns/kv/two');
  await page.waitForTimeout(300);
  assert.equal(await page.locator('#tail li[data-key="two"]').count(), 0, 'nothing shown while paused');
  await page.click('#tail-pause');
  await page.waitForSelector('#tail li[data-key="two"][data-kind="delete"]', { timeout: 2000 });
  const kinds = await page.$$eval('#tail li', (els) => els.map((e) => `${e.dataset.kind}:${e.dataset.key}`));
  assert.deepEqual(kinds.slice(0, 3), ['delete:two', 'put:two', 'put:jobs/one'], 'resumed from the last revision, newest first');
  // The new key shows in the key list too; the deleted one left it.
  await page.waitForSelector('#keys button:text("jobs/one")');
  assert.equal(await page.locator('#keys button:text-is("two")').count(), 0, 'a deleted key leaves the list');
  assert.deepEqual(errors, []);
  await context.close();
});

test('history shows who changed what and why, with a diff of the changed field, and rolls back', async () => {
  const doc = '/v1/ns/hist-ns/kv/plan';
  await api('PUT', doc, { value: { step: 1, owner: 'alice', tags: ['a'] } }, { 'x-agent-id': 'alice', 'x-change-reason': 'first draft' });
  await api('PUT', doc, { value: { step: 2, owner: 'alice', tags: ['a'], done: false } }, { 'x-agent-id': 'bob', 'x-change-reason': 'advance the plan' });
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/ns/hist-ns?key=plan');
  await page.waitForSelector('#entry-version:text("2")');
  const diff = page.locator('#diff');
  await diff.locator('tr:has(td:text("/step"))').waitFor();
  const stepRow = await diff.locator('tr:has(td:text("/step"))').innerText();
  assert.match(stepRow, /changed\s+1\s+2/);
  assert.match(await diff.locator('tr:has(td:text("/done"))').innerText(), /added/);
  assert.equal(await diff.locator('tr:has(td:text("/owner"))').count(), 0, 'unchanged fields are not listed');
  const who = await diff.innerText();
  assert.match(who, /v1 by alice — “first draft”/);
  assert.match(who, /v2 by bob — “advance the plan”/);
  // Any two versions: v2 → v1 is the reverse change.
  await page.selectOption('#diff-from', '2');
  await page.selectOption('#diff-to', '1');
  assert.match(await diff.locator('tr:has(td:text("/done"))').innerText(), /removed/);
  // Roll back to v1 after confirming: v3 holds v1's value.
  await page.click('button[aria-label="Roll back to version 1"]');
  await page.waitForSelector('#confirm-dialog[open]');
  await page.click('#confirm-ok');
  await page.waitForSelector('#entry-version:text("3")');
  const now = await api('GET', doc);
  assert.deepEqual(now.body.value, { step: 1, owner: 'alice', tags: ['a'] });
  assert.equal(now.body.version, 3);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a stale edit shows the 412 conflict and the newer value, and writes nothing', async () => {
  const doc = '/v1/ns/edit-ns/kv/cfg';
  await api('PUT', doc, { value: { limit: 1 } });
  const { page, context } = await open();
  await page.goto(BASE + '/#/ns/edit-ns?key=cfg');
  await page.waitForSelector('#entry-version:text("1")');
  await page.click('#edit');
  await page.fill('#edit-value', '{"limit": 5}');
  // Someone else writes first.
  assert.equal((await api('PUT', doc, { value: { limit: 2, by: 'other' } })).status, 200);
  await page.click('#edit-save');
  const conflict = await page.waitForSelector('#conflict');
  const text = await conflict.textContent();
  assert.match(text, /412/);
  assert.match(text, /based on v1; the key is now v2/);
  assert.match(await page.textContent('#conflict-value'), /"other"/);
  const now = await api('GET', doc);
  assert.deepEqual(now.body.value, { limit: 2, by: 'other' }, 'the stale edit wrote nothing');
  // Editing the newer version then saves with If-Match "2".
  await page.click('#conflict button:text("Edit the newer version")');
  await page.fill('#edit-value', '{"limit": 5}');
  await page.click('#edit-save');
  await page.waitForSelector('#entry-version:text("3")');
  assert.deepEqual((await api('GET', doc)).body.value, { limit: 5 });
  await context.close();
});

test('editing an expiring key keeps its time to live', async () => {
  const doc = '/v1/ns/edit-ns/kv/session';
  await api('PUT', doc, { value: { user: 'a' }, ttl_ms: 600000 });
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/ns/edit-ns?key=session');
  await page.waitForSelector('#entry-version:text("1")');
  assert.match(await page.textContent('#entry'), /expires in/);
  await page.click('#edit');
  assert.ok(Number(await page.inputValue('#edit-ttl')) > 590000, 'the TTL field holds the time left');
  await page.fill('#edit-value', '{"user": "b"}');
  await page.click('#edit-save');
  await page.waitForSelector('#entry-version:text("2")');
  const now = (await api('GET', doc)).body;
  assert.deepEqual(now.value, { user: 'b' });
  assert.ok(now.expires_at && Date.parse(now.expires_at) - Date.now() > 590000, `still expires: ${now.expires_at}`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a dead letter is retried from the page', async () => {
  const q = '/v1/queues/page-q';
  const t = (await api('POST', `${q}/tasks`, { payload: { job: 'resize' }, max_attempts: 1 })).body;
  const l = (await api('POST', `${q}/lease`, { worker: 'w1', lease_ms: 30000 })).body.tasks[0];
  assert.equal((await api('POST', `${q}/tasks/${l.id}/nack`, { lease_token: l.lease_token, error: 'disk full' })).status, 200);
  assert.equal((await api('GET', `${q}/tasks/${t.id}`)).body.state, 'dead');
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/queues/page-q?state=dead');
  await page.waitForSelector('#count-dead:text("1")');
  const row = page.locator(`#task-list tr[data-task="${t.id}"]`);
  assert.match(await row.innerText(), /disk full/);
  await row.locator('button:text("Retry")').click();
  await page.waitForSelector('.toast:has-text("back in the queue")');
  await page.waitForSelector('#count-dead:text("0")');
  await page.waitForSelector('#count-ready:text("1")');
  const after = (await api('GET', `${q}/tasks/${t.id}`)).body;
  assert.equal(after.state, 'ready');
  // The retry arrived as a live task event too.
  await page.waitForSelector(`#queue-events li[data-task="${t.id}"][data-state="ready"]`);
  assert.deepEqual(errors, []);
  await context.close();
});

test('an agent whose heartbeat lapses turns lost on the page when the event arrives', async () => {
  assert.equal((await api('PUT', '/v1/agents/flaky-1', { capabilities: ['crawl'], heartbeat_ttl_ms: 1500 })).status, 200);
  assert.equal((await api('POST', '/v1/ns/agent-ns/locks/db', { owner: 'flaky-1', ttl_ms: 60000 })).status, 200);
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/agents');
  await live(page);
  const row = page.locator('#agents tr[data-agent="flaky-1"]');
  await row.waitFor();
  assert.match(await row.innerText(), /crawl/);
  // No heartbeat: the row turns lost (highlighted) without a reload.
  await page.waitForSelector('#agents tr.lost[data-agent="flaky-1"][data-state="lost"]', { timeout: 8000 });
  assert.match(await page.locator('#agents tr[data-agent="flaky-1"] .pill.bad').first().innerText(), /lost/);
  // Its detail shows nothing held any more: the lock was freed at once.
  await page.goto(BASE + '/#/agents/flaky-1');
  await page.waitForSelector('h2:text("Held locks (0)")');
  assert.equal((await api('GET', '/v1/ns/agent-ns/locks')).body.items.length, 0);
  assert.deepEqual(errors, []);
  await context.close();
});

test('an agent shows its held locks and leased tasks; locks show holder, token and expiry', async () => {
  assert.equal((await api('PUT', '/v1/agents/holder-1', { heartbeat_ttl_ms: 60000 })).status, 200);
  const g = (await api('POST', '/v1/ns/lock-ns/locks/leader', { owner: 'holder-1', ttl_ms: 60000 })).body;
  await api('POST', '/v1/queues/hold-q/tasks', { payload: 1 });
  const l = (await api('POST', '/v1/queues/hold-q/lease', { worker: 'holder-1', lease_ms: 60000 })).body.tasks[0];
  const { page, context, errors } = await open();
  await page.goto(BASE + '/#/agents/holder-1');
  await page.waitForSelector('h2:text("Held locks (1)")');
  assert.match(await page.innerText('main'), new RegExp(`lock-ns/leader[\\s\\S]*${g.fencing_token}`));
  assert.match(await page.innerText('main'), new RegExp(`hold-q/${l.id}`));
  await page.goto(BASE + '/#/locks/lock-ns');
  const row = page.locator('#locks tr[data-lock="leader"]');
  await row.waitFor();
  assert.match(await row.innerText(), new RegExp(`holder-1\\s+${g.fencing_token}`));
  assert.match(await row.innerText(), /expires in/);
  assert.deepEqual(errors, []);
  await context.close();
});

test('keyboard: skip link, then the sections by Tab and Enter', async () => {
  const { page, context } = await open();
  await page.goto(BASE + '/');
  await page.waitForSelector('h1:text("Overview")');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Skip to content');
  let found = false;
  for (let i = 0; i < 8 && !found; i++) {
    await page.keyboard.press('Tab');
    found = (await page.evaluate(() => document.activeElement.textContent)) === 'Queues';
  }
  assert.ok(found, 'the Queues link is reachable by Tab');
  await page.keyboard.press('Enter');
  await page.waitForSelector('h1:text("Queues")');
  assert.equal(await page.evaluate(() => location.hash), '#/queues');
  await context.close();
});

test('no serious accessibility violations (axe-core), light and dark, desktop and phone', async () => {
  await api('PUT', '/v1/ns/axe-ns/kv/doc', { value: { a: 1 } }, { 'x-agent-id': 'axe' });
  await api('PUT', '/v1/ns/axe-ns/kv/doc', { value: { a: 2 } }, { 'x-agent-id': 'axe' });
  const pages = ['/', '/#/ns', '/#/ns/axe-ns?key=doc', '/#/queues/page-q?state=ready', '/#/agents', '/#/locks/lock-ns', '/#/partitions'];
  const found = [];
  for (const colorScheme of ['light', 'dark']) {
    for (const [name, size] of Object.entries(SIZES)) {
      // CSP bypassed only so that axe's own script can be injected.
      const { page, context } = await open({ colorScheme, size, bypassCSP: true });
      for (const p of pages) {
        await page.goto(BASE + p);
        await page.waitForSelector('main h1');
        await page.waitForLoadState('networkidle');
        await page.evaluate(axeSource);
        const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
        for (const v of r.violations.filter((x) => x.impact === 'serious' || x.impact === 'critical')) {
          found.push(`${colorScheme} ${name} ${p}: ${v.id} (${v.impact}) ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
        }
      }
      await context.close();
    }
  }
  assert.deepEqual(found, []);
});

test('screenshots of every view at 1280x800 and 390x844, light and dark; none wider than the screen', async () => {
  const long = `very/${'long-'.repeat(100)}key`;
  await api('PUT', `/v1/ns/long-ns/kv/${encodeURIComponent(long)}`, { value: { note: 'a key of 505 characters' } });
  const views = { overview: '/', namespace: '/#/ns/hist-ns?key=plan', longkey: `/#/ns/long-ns?key=${encodeURIComponent(long)}`, queue: '/#/queues/page-q?state=ready', agents: '/#/agents', locks: '/#/locks/lock-ns', partitions: '/#/partitions' };
  await api('POST', '/v1/partitions', { name: 'shots-part', owner_agent: 'holder-1', tier: 'working', quota_bytes: 100000 });
  await api('PUT', '/v1/ns/shots-part/kv/notes', { value: 'x'.repeat(30000) });
  let n = 0;
  for (const colorScheme of ['light', 'dark']) {
    for (const [size, viewport] of Object.entries(SIZES)) {
      const { page, context, errors } = await open({ size: viewport, colorScheme });
      for (const [view, p] of Object.entries(views)) {
        await page.goto(BASE + p);
        await page.waitForSelector('main h1');
        await page.waitForLoadState('networkidle');
        await page.waitForTimeout(view === 'overview' ? 2200 : 300);
        // Nothing wider than the viewport: the page itself never scrolls sideways.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 1, `${view} at ${size} is ${overflow}px wider than the viewport`);
        await page.screenshot({ path: path.join(SHOTS, `${view}-${size}-${colorScheme}.png`), fullPage: true });
        n++;
      }
      assert.deepEqual(errors, [], `${colorScheme} ${size}`);
      await context.close();
    }
  }
  assert.equal(n, 28);
});
