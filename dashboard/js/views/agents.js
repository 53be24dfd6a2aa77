// Agents: state, capabilities, heartbeat age (amber past half the TTL, red near it), held locks
// and leased tasks; state changes arrive on the `agents.*` channel and lost agents are
// highlighted as the event arrives.

import { get, all, seg } from '../api.js';
import { h, fill, dur, time, jsonView, pill } from '../dom.js';

const stateKind = (s) => (s === 'lost' || s === 'error' ? 'bad' : s === 'running' || s === 'ready' ? 'ok' : s === 'paused' || s === 'terminating' ? 'warn' : '');

/** Heartbeat age with its colour: amber past half the TTL, red past 80 % (or lost). */
function heartbeat(a) {
  const el = h('span.pill', { dataset: { heartbeat: a.id } });
  const tick = () => {
    if (a.state === 'lost' || a.state === 'terminated') {
      el.textContent = `last ${dur(Date.now() - Date.parse(a.last_heartbeat))} ago`;
      el.className = a.state === 'lost' ? 'pill bad' : 'pill';
      return;
    }
    const age = Date.now() - Date.parse(a.last_heartbeat);
    const f = age / a.heartbeat_ttl_ms;
    el.textContent = `${dur(age)} ago`;
    el.className = `pill ${f >= 0.8 ? 'bad' : f >= 0.5 ? 'warn' : 'ok'}`;
    el.title = `heartbeat every < ${dur(a.heartbeat_ttl_ms)} or it is marked lost`;
  };
  tick();
  return { el, tick };
}

export async function agents(main, { ctx }) {
  const body = h('tbody');
  const filter = h('select#agent-state', h('option', { value: '' }, 'every state'),
    ['initializing', 'ready', 'running', 'paused', 'terminating', 'terminated', 'error', 'lost'].map((s) => h('option', { value: s }, s)));
  fill(main, h('h1', 'Agents'),
    h('section.panel', h('div.row', h('label', { for: 'agent-state' }, 'State'), filter),
      h('div.table-wrap', { tabindex: 0 }, h('table#agents', h('thead', h('tr', h('th', 'agent'), h('th', 'state'), h('th', 'capabilities'), h('th', 'heartbeat'), h('th.hide-narrow', 'TTL'), h('th.hide-narrow', 'state since'))), body))));
  const rows = new Map();
  const ticks = new Map();
  // Agents seen turning lost while the page is open keep their highlight across reloads.
  const lostHere = new Set();
  const row = (a, fresh) => {
    const hb = heartbeat(a);
    ticks.set(a.id, hb.tick);
    if (a.state === 'lost' && fresh) lostHere.add(a.id);
    const tr = h(`tr${a.state === 'lost' && lostHere.has(a.id) ? '.lost' : ''}`, { dataset: { agent: a.id, state: a.state } },
      h('td', h('a', { href: `#/agents/${encodeURIComponent(a.id)}` }, a.id)),
      h('td', pill(a.state, stateKind(a.state))),
      h('td', (a.capabilities || []).map((c) => [pill(c), ' '])),
      h('td', hb.el), h('td.hide-narrow', dur(a.heartbeat_ttl_ms)), h('td.hide-narrow', time(a.state_changed_at)));
    return tr;
  };
  const load = async () => {
    const items = await all(`/v1/agents${filter.value ? `?state=${filter.value}` : ''}`, 1000);
    rows.clear();
    ticks.clear();
    fill(body, items.map((a) => { const tr = row(a, false); rows.set(a.id, tr); return tr; }));
    if (!items.length) body.append(h('tr', h('td', { colspan: 6 }, h('span.muted', 'No agents.'))));
  };
  filter.addEventListener('change', () => ctx.act('Listing agents', load));
  await load();
  // State changes of every agent: refetch that one and redraw its row at once.
  const sub = ctx.live.add(() => ({ op: 'subscribe', channel: 'agents.*' }), async (f) => {
    if (f.type !== 'message' || !f.payload || !f.payload.agent) return;
    const id = f.payload.agent;
    try {
      const a = await get(`/v1/agents/${seg(id)}`);
      if (filter.value && a.state !== filter.value) { rows.get(id)?.remove(); rows.delete(id); return; }
      const tr = row(a, true);
      if (rows.has(id)) rows.get(id).replaceWith(tr); else body.append(tr);
      rows.set(id, tr);
      if (a.state === 'lost') ctx.toast(`Agent ${id} was lost: its locks and leased tasks were freed`, 'bad');
    } catch (e) { console.warn(e.message); }
  });
  const timer = setInterval(() => { for (const t of ticks.values()) t(); }, 1000);
  const reload = setInterval(() => load().catch(() => {}), 10000);
  return () => { sub.cancel(); clearInterval(timer); clearInterval(reload); };
}

export async function agent(main, { args: [id], ctx }) {
  const box = h('div');
  fill(main, h('h1', 'Agent ', h('span.mono', id)), box);
  let ticker = null;
  const draw = async () => {
    const a = await get(`/v1/agents/${seg(id)}`);
    const hb = heartbeat(a);
    ticker = hb.tick;
    const held = a.held || { locks: [], tasks: [] };
    fill(box,
      h('div.grid',
        h('section.panel', h('h2', 'State ', pill(a.state, stateKind(a.state))),
          h('dl.meta',
            h('dt', 'heartbeat'), h('dd', hb.el),
            h('dt', 'TTL'), h('dd', dur(a.heartbeat_ttl_ms)),
            h('dt', 'deadline'), h('dd', time(a.heartbeat_deadline)),
            h('dt', 'registered'), h('dd', time(a.registered_at)),
            h('dt', 'state since'), h('dd', time(a.state_changed_at)),
            h('dt', 'capabilities'), h('dd', (a.capabilities || []).map((c) => [pill(c), ' '])),
            h('dt', 'metadata'), h('dd', jsonView(a.metadata)))),
        h('section.panel', h('h2', `Held locks (${held.locks.length})`),
          held.locks.length ? h('table', h('thead', h('tr', h('th', 'lock'), h('th.num', 'fencing token'), h('th', 'expires'))),
            h('tbody', held.locks.map((l) => h('tr', h('td', h('a', { href: `#/locks/${encodeURIComponent(l.namespace)}` }, `${l.namespace}/${l.name}`)), h('td.num', String(l.fencing_token)), h('td', time(l.expires_at)))))) : h('p.muted', 'None.'),
          h('h2', `Leased tasks (${held.tasks.length})`),
          held.tasks.length ? h('table', h('thead', h('tr', h('th', 'task'), h('th.num', 'attempt'), h('th', 'lease until'))),
            h('tbody', held.tasks.map((t) => h('tr', h('td', h('a', { href: `#/queues/${encodeURIComponent(t.queue)}?state=leased` }, `${t.queue}/${t.id}`)), h('td.num', String(t.attempts)), h('td', time(t.leased_until)))))) : h('p.muted', 'None.'))));
  };
  await draw();
  const sub = ctx.live.add(() => ({ op: 'subscribe', channel: `agents.${id}` }), (f) => {
    if (f.type === 'message') draw().catch((e) => fill(box, ctx.problemBox(e)));
  });
  const timer = setInterval(() => ticker && ticker(), 1000);
  const reload = setInterval(() => draw().catch(() => {}), 5000);
  return () => { sub.cancel(); clearInterval(timer); clearInterval(reload); };
}
