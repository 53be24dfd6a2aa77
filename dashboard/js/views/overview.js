// Overview: Redis, namespaces, queues, agents and the pool at a glance; live request and event
// rates from the watch socket's `stats` op (no polling of /metrics).

import { get, all } from '../api.js';
import { h, fill, bytes, num, dur, sparkline, bar, pill } from '../dom.js';

export default async function overview(main, { ctx }) {
  const rates = h('div.panel', { 'aria-labelledby': 'rates-h' }, h('h2#rates-h', 'Live rates'), h('p.muted', 'waiting for the first sample…'));
  const redis = h('div.panel', h('h2', 'Redis'), h('p.muted', 'loading…'));
  const ns = h('section.panel', { 'aria-labelledby': 'ns-h' }, h('h2#ns-h', 'Namespaces'));
  const qs = h('section.panel', { 'aria-labelledby': 'q-h' }, h('h2#q-h', 'Queues'));
  const ag = h('section.panel', { 'aria-labelledby': 'a-h' }, h('h2#a-h', 'Agents'));
  const pool = h('section.panel', { 'aria-labelledby': 'p-h' }, h('h2#p-h', 'Partitions and pool'));
  fill(main, h('h1', 'Overview'), h('div.grid', redis, rates), h('div.grid', ns, qs), h('div.grid', ag, pool));

  const section = async (el, title, fn) => {
    try { await fn(); } catch (e) { fill(el, h('h2', title), ctx.problemBox(e)); }
  };

  // Live rates: one `stats` frame a second; rates are the differences between frames.
  const samples = { req: [], err: [], ev: [] };
  let prev = null;
  const sub = ctx.live.add(() => ({ op: 'stats', interval_ms: 1000 }), (f) => {
    if (f.type === 'error') { fill(rates, h('h2', 'Live rates'), ctx.problemBox({ message: `${f.code}: ${f.message}` })); return; }
    if (f.type !== 'stats') return;
    const s = f.stats;
    const t = Date.parse(f.time);
    if (prev && t > prev.t) {
      const secs = (t - prev.t) / 1000;
      const push = (arr, v) => { arr.push(Math.max(0, v)); if (arr.length > 60) arr.shift(); };
      push(samples.req, (s.requests_total - prev.s.requests_total) / secs);
      push(samples.err, (s.server_errors_total + s.client_errors_total - prev.s.server_errors_total - prev.s.client_errors_total) / secs);
      push(samples.ev, (s.watch_events_sent_total - prev.s.watch_events_sent_total) / secs);
    }
    prev = { s, t };
    const last = (a) => (a.length ? a.at(-1).toFixed(1) : '–');
    fill(rates, h('h2#rates-h', 'Live rates ', h('span.muted', '(this service process)')),
      h('div.grid.counts',
        h('div', h('div.muted', 'requests/s'), h('div.stat#rate-requests', last(samples.req)), sparkline(samples.req, 'requests per second')),
        h('div', h('div.muted', 'errors/s (4xx+5xx)'), h('div.stat', last(samples.err)), sparkline(samples.err, 'errors per second')),
        h('div', h('div.muted', 'watch events/s'), h('div.stat', last(samples.ev)), sparkline(samples.ev, 'watch events per second'))),
      h('p.muted', `${num(s.requests_total)} requests, ${num(s.watch_events_sent_total)} events sent since start; ${s.ws_connections} watch sockets open.`));
  });

  const jobs = [
    section(redis, 'Redis', async () => {
      const [st, ready] = await Promise.all([get('/v1/status'), fetch('/readyz').then((r) => r.ok)]);
      const topo = st.topology || {};
      fill(redis, h('h2', 'Redis ', ready ? pill('ready', 'ok') : pill('not ready', 'bad')),
        h('dl.meta',
          h('dt', 'version'), h('dd', st.redis_version || '–'),
          h('dt', 'mode'), h('dd', `${st.redis_mode} (${st.redis_source})`),
          h('dt', 'role'), h('dd', st.redis_role || '–'),
          h('dt', 'memory'), h('dd', `${bytes(st.used_memory_bytes)}${st.maxmemory_bytes ? ` of ${bytes(st.maxmemory_bytes)}` : ''}`),
          h('dt', 'latency'), h('dd', `${st.redis_latency_ms} ms`),
          h('dt', 'clients'), h('dd', num(st.connected_clients)),
          h('dt', 'primaries'), h('dd', topo.primaries ? `${topo.primaries.length}, ${topo.replicas} replicas` : '–'),
          h('dt', 'durability'), h('dd', topo.durability || '–'),
          h('dt', 'service'), h('dd', `${st.service_version}, up ${dur(st.uptime_seconds * 1000)}`)));
    }),
    section(ns, 'Namespaces', async () => {
      const items = await all('/v1/namespaces', 201);
      const count = items.length > 200 ? '200+' : String(items.length);
      fill(ns, h('h2#ns-h', `Namespaces `, h('span.muted', `(${count})`)),
        items.length ? h('div.table-wrap', { tabindex: 0 }, h('table', h('thead', h('tr', h('th', 'namespace'), h('th.num', 'keys'), h('th.num', 'revision'), h('th.num', 'bytes'))),
          h('tbody', items.slice(0, 12).map((n) => h('tr', h('td', h('a', { href: `#/ns/${encodeURIComponent(n.namespace)}` }, n.namespace)),
            h('td.num', num(n.keys)), h('td.num', num(n.revision)), h('td.num', bytes(n.bytes))))))) : h('p.muted', 'No namespaces yet: write a key.'),
        items.length > 12 ? h('a', { href: '#/ns' }, `All ${count} namespaces`) : null);
    }),
    section(qs, 'Queues', async () => {
      const items = await all('/v1/queues', 201);
      fill(qs, h('h2#q-h', 'Queues ', h('span.muted', `(${items.length > 200 ? '200+' : items.length})`)),
        items.length ? h('div.table-wrap', { tabindex: 0 }, h('table', h('thead', h('tr', h('th', 'queue'), h('th.num', 'ready'), h('th.num', 'leased'), h('th.num', 'dead'), h('th.num', 'oldest ready'))),
          h('tbody', items.slice(0, 12).map((q) => h('tr', h('td', h('a', { href: `#/queues/${encodeURIComponent(q.queue)}` }, q.queue), q.paused ? [' ', pill('paused', 'warn')] : null),
            h('td.num', num(q.ready)), h('td.num', num(q.leased)), h('td.num', q.dead ? pill(num(q.dead), 'bad') : '0'), h('td.num', dur(q.oldest_ready_age_ms))))))) : h('p.muted', 'No queues yet.'));
    }),
    section(ag, 'Agents', async () => {
      const items = await all('/v1/agents', 1000);
      const by = {};
      for (const a of items) by[a.state] = (by[a.state] || 0) + 1;
      fill(ag, h('h2#a-h', 'Agents ', h('span.muted', `(${items.length})`)),
        items.length ? h('div.row', Object.entries(by).sort().map(([s, n]) => pill(`${s}: ${n}`, s === 'lost' || s === 'error' ? 'bad' : s === 'running' || s === 'ready' ? 'ok' : ''))) : h('p.muted', 'No agents registered.'),
        h('p', h('a', { href: '#/agents' }, 'Agents and what they hold')));
    }),
    section(pool, 'Partitions and pool', async () => {
      const p = await get('/v1/pool');
      fill(pool, h('h2#p-h', 'Partitions and pool'),
        h('div.muted', `allocated ${bytes(p.allocated_bytes)} of ${bytes(p.capacity_bytes)} to ${p.partitions} partitions`),
        bar(p.utilization, 'pool allocated'),
        h('div.muted', `written ${bytes(p.used_bytes)} of the ${bytes(p.allocated_bytes)} allocated`),
        bar(p.used_bytes / Math.max(1, p.allocated_bytes), 'pool used of allocated'),
        h('p', h('a', { href: '#/partitions' }, 'Partitions')));
    }),
  ];
  await Promise.all(jobs);
  return () => sub.cancel();
}
