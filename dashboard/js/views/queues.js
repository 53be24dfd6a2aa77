// Queues: the list, and one queue's counts per state (with sparklines), oldest ready age,
// pause/resume, tasks by state, a task's attempts/last_error/result, dead letters with retry and
// purge, and its live task events (the watch socket's `queue` op).

import { get, post, del, seg } from '../api.js';
import { h, fill, num, dur, time, jsonView, sparkline, pill } from '../dom.js';

const STATES = ['ready', 'delayed', 'leased', 'failed', 'completed', 'dead'];

export async function queues(main, { ctx }) {
  const body = h('tbody');
  fill(main, h('h1', 'Queues'), h('section.panel', h('div.table-wrap', { tabindex: 0 }, h('table',
    h('thead', h('tr', h('th', 'queue'), ...STATES.map((s) => h('th.num', s)), h('th.num', 'oldest ready'), h('th', 'state'))), body))));
  let cursor = null;
  let any = false;
  do {
    const page = await get(`/v1/queues?limit=200${cursor ? `&cursor=${seg(cursor)}` : ''}`);
    for (const q of page.items) {
      any = true;
      body.append(h('tr', h('td', h('a', { href: `#/queues/${encodeURIComponent(q.queue)}` }, q.queue)),
        ...STATES.map((s) => h('td.num', s === 'dead' && q.dead ? pill(num(q.dead), 'bad') : num(q[s]))),
        h('td.num', dur(q.oldest_ready_age_ms)), h('td', q.paused ? pill('paused', 'warn') : pill('running', 'ok'))));
    }
    cursor = page.next_cursor;
  } while (cursor);
  if (!any) body.append(h('tr', h('td', { colspan: 9 }, h('span.muted', 'No queues yet: enqueue a task.'))));
}

export async function queue(main, { args: [q], query, ctx }) {
  const base = `/v1/queues/${seg(q)}`;
  const counts = h('div.grid.counts#counts');
  const header = h('div.row');
  const tabs = h('div.tabs', { role: 'tablist', 'aria-label': 'Tasks by state' });
  const list = h('div#task-list', { role: 'tabpanel' });
  const detail = h('section.panel#task', { 'aria-live': 'polite' }, h('h2', 'Task'), h('p.muted', 'Select a task.'));
  const events = h('ol.tail#queue-events', { 'aria-label': 'Task events, newest first', reversed: true });
  let tab = STATES.includes(query.get('state')) ? query.get('state') : 'ready';
  const history = Object.fromEntries(STATES.map((s) => [s, []]));
  let stats = null;

  fill(main, h('h1', 'Queue ', h('span.mono', q)), header,
    h('section.panel', { 'aria-labelledby': 'counts-h' }, h('h2#counts-h', 'Tasks per state'), counts),
    h('div.cols',
      h('section.panel', { 'aria-labelledby': 'tasks-h' }, h('h2#tasks-h', 'Tasks'), tabs, list),
      detail),
    h('section.panel', { 'aria-labelledby': 'qev-h' }, h('h2#qev-h', 'Live task events'), events));

  const drawHeader = () => {
    const toggle = h('button#pause-queue', {
      type: 'button',
      class: stats.paused ? '' : 'ghost',
      onclick: async () => {
        const r = await ctx.act(stats.paused ? 'Resume' : 'Pause', () => post(`${base}/${stats.paused ? 'resume' : 'pause'}`));
        if (r === ctx.FAILED) return;
        stats = r;
        ctx.toast(`${q} ${stats.paused ? 'paused' : 'resumed'}`);
        drawStats();
      },
    }, stats.paused ? 'Resume' : 'Pause');
    fill(header, stats.paused ? pill('paused: no leases are handed out', 'warn') : pill('running', 'ok'),
      h('span.muted', `oldest ready task waiting ${dur(stats.oldest_ready_age_ms)}`),
      h('span.muted', `${num(stats.enqueued_total)} enqueued, ${num(stats.completed_total)} completed, ${num(stats.failed_total)} failed attempts, ${num(stats.dead_total)} dead, ${num(stats.lease_expired_total)} leases expired in all`),
      h('span.spacer'), toggle);
  };
  const drawStats = () => {
    for (const s of STATES) { history[s].push(stats[s]); if (history[s].length > 60) history[s].shift(); }
    fill(counts, STATES.map((s) => h('div', { dataset: { state: s } },
      h('div.muted', s), h(`div.stat#count-${s}`, num(stats[s])), sparkline(history[s], `${s} tasks`))));
    drawHeader();
  };
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try { stats = await get(base); drawStats(); } catch (e) { fill(counts, ctx.problemBox(e)); }
    }, 250);
  };

  const drawTabs = () => fill(tabs, STATES.map((s) => h('button', {
    type: 'button', role: 'tab', 'aria-selected': String(s === tab), id: `tab-${s}`,
    onclick: () => { tab = s; ctx.go(`/queues/${encodeURIComponent(q)}`, { state: s }, true); drawTabs(); loadTasks(); },
  }, s)));

  async function loadTasks(cursor = null, into = null) {
    let page;
    try {
      page = await get(`${base}/tasks?state=${tab}&limit=50${cursor ? `&cursor=${seg(cursor)}` : ''}`);
    } catch (e) { fill(list, ctx.problemBox(e)); return; }
    const body = into || h('tbody');
    for (const t of page.items) {
      body.append(h('tr', { dataset: { task: t.id } },
        h('td', h('button.link', { type: 'button', onclick: () => showTask(t.id) }, t.id)),
        h('td.num', `${t.attempts}/${t.max_attempts}`), h('td.num', String(t.priority)),
        h('td.hide-narrow', tab === 'leased' ? (t.lease_owner || '–') : time(t.finished_at || t.run_at)),
        h('td', t.last_error ? h('span.mono', t.last_error.slice(0, 80)) : h('span.muted', '–')),
        tab === 'dead' ? h('td', h('button.ghost', { type: 'button', 'aria-label': `Retry task ${t.id}`, onclick: () => retry(t.id) }, 'Retry')) : null));
    }
    if (!into) {
      const more = h('button.ghost', { type: 'button', hidden: !page.next_cursor }, 'Load more');
      const purge = tab === 'dead' && page.total ? h('button.danger#purge', { type: 'button', onclick: purgeDead }, `Purge all ${page.total}`) : null;
      fill(list, h('div.row', h('span.muted', `${num(page.total)} ${tab}`), h('span.spacer'), purge),
        page.items.length ? h('div.table-wrap', { tabindex: 0 }, h('table', h('thead', h('tr', h('th', 'id'), h('th.num', 'attempts'), h('th.num', 'prio'),
          h('th.hide-narrow', tab === 'leased' ? 'worker' : 'when'), h('th', 'last error'), tab === 'dead' ? h('th', h('span.sr-only', 'actions')) : null)), body)) : h('p.muted', `No ${tab} tasks.`),
        more);
      let next = page.next_cursor;
      more.addEventListener('click', async () => { const p = await loadTasks(next, body); if (p) { next = p.next_cursor; more.hidden = !next; } });
    }
    return page;
  }

  async function retry(id) {
    if ((await ctx.act('Retry', () => post(`${base}/dead/${seg(id)}/retry`))) === ctx.FAILED) return;
    ctx.toast(`Task ${id} is back in the queue`);
    loadTasks();
    refresh();
  }
  async function purgeDead() {
    if (!(await ctx.confirmAction(`Purge the dead letters of ${q}?`, 'Deletes every dead task of this queue for good.', 'Purge'))) return;
    const r = await ctx.act('Purge', () => del(`${base}/dead`));
    if (r === ctx.FAILED) return;
    ctx.toast(`Purged ${r && r.purged} dead tasks`);
    loadTasks();
    refresh();
  }

  async function showTask(id) {
    try {
      const t = await get(`${base}/tasks/${seg(id)}`);
      fill(detail, h('div.row', h('h2.mono', t.id), pill(t.state, t.state === 'dead' ? 'bad' : t.state === 'completed' ? 'ok' : '')),
        h('dl.meta',
          h('dt', 'attempts'), h('dd', `${t.attempts} of ${t.max_attempts}`),
          h('dt', 'priority'), h('dd', String(t.priority)),
          h('dt', 'enqueued'), h('dd', time(t.enqueued_at)),
          h('dt', 'run at'), h('dd', time(t.run_at)),
          t.leased_until ? [h('dt', 'leased until'), h('dd', time(t.leased_until))] : null,
          t.lease_owner ? [h('dt', 'worker'), h('dd', t.lease_owner)] : null,
          t.finished_at ? [h('dt', 'finished'), h('dd', time(t.finished_at))] : null,
          t.idempotency_key ? [h('dt', 'idempotency key'), h('dd.mono', t.idempotency_key)] : null,
          h('dt', 'last error'), h('dd#task-error', t.last_error ? h('span.mono', t.last_error) : h('span.muted', 'none'))),
        h('h3', 'Payload'), h('pre.json', jsonView(t.payload)),
        t.result !== undefined && t.result !== null ? [h('h3', 'Result'), h('pre.json', jsonView(t.result))] : null,
        t.state === 'dead' ? h('button#retry-task', { type: 'button', onclick: () => retry(t.id) }, 'Retry this task') : null);
    } catch (e) { fill(detail, h('h2', 'Task'), ctx.problemBox(e)); }
  }

  stats = await get(base);
  drawStats();
  drawTabs();
  await loadTasks();

  const sub = ctx.live.add(() => ({ op: 'queue', queue: q }), (f) => {
    if (f.type === 'task') {
      const t = f.task;
      events.prepend(h('li.fresh', { dataset: { task: t.id, state: t.state } }, pill(t.state, t.state === 'dead' ? 'bad' : t.state === 'completed' ? 'ok' : ''),
        h('span.mono', t.id), h('span.muted', `attempt ${t.attempts}/${t.max_attempts}`),
        t.lease_owner ? h('span', `worker ${t.lease_owner}`) : null, t.last_error ? h('span.mono', t.last_error.slice(0, 80)) : null,
        h('span.muted', t.time ? time(new Date(t.time).toISOString()) : '')));
      while (events.children.length > 200) events.lastChild.remove();
      refresh();
    } else if (f.type === 'error') {
      fill(events, h('li', ctx.problemBox({ message: `${f.code}: ${f.message}` })));
    }
  });
  const timer = setInterval(refresh, 5000);
  return () => { sub.cancel(); clearInterval(timer); clearTimeout(pending); };
}
