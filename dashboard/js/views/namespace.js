// Namespaces: the list, and one namespace's key browser (prefix search, cursor paging), entry
// (value, metadata, TTL, versions, history with a diff between any two versions and who/why,
// rollback, edit with If-Match) and a live tail of its events that resumes from the last
// revision it saw.

import { call, get, seg, ProblemError } from '../api.js';
import { h, fill, bytes, num, time, ago, countdown, jsonView, jsonDiff, pill } from '../dom.js';

export async function namespaces(main, { ctx }) {
  const list = h('tbody');
  const more = h('button.ghost', { type: 'button', hidden: true }, 'Load more');
  const filter = h('input#ns-filter', { type: 'search', placeholder: 'filter by name', 'aria-label': 'Filter namespaces by name' });
  let rows = [];
  let cursor = null;
  const draw = () => {
    const f = filter.value.trim();
    fill(list, rows.filter((n) => n.namespace.includes(f)).map((n) => h('tr',
      h('td', h('a', { href: `#/ns/${encodeURIComponent(n.namespace)}` }, n.namespace)),
      h('td.num', num(n.keys)), h('td.num', num(n.revision)), h('td.num', bytes(n.bytes)))));
  };
  const load = async () => {
    const page = await get(`/v1/namespaces?limit=200${cursor ? `&cursor=${seg(cursor)}` : ''}`);
    rows = rows.concat(page.items);
    cursor = page.next_cursor;
    more.hidden = !cursor;
    draw();
  };
  more.addEventListener('click', () => ctx.act('Loading namespaces', load));
  filter.addEventListener('input', draw);
  fill(main, h('h1', 'Namespaces'),
    h('section.panel', h('div.row', h('label', { for: 'ns-filter' }, 'Filter'), filter),
      h('div.table-wrap', { tabindex: 0 }, h('table', h('thead', h('tr', h('th', 'namespace'), h('th.num', 'keys'), h('th.num', 'revision'), h('th.num', 'bytes'))), list)), more));
  await load();
  if (!rows.length) list.append(h('tr', h('td', { colspan: 4 }, h('span.muted', 'No namespaces yet.'))));
}

export async function namespace(main, { args: [ns], query, ctx }) {
  const base = `/v1/ns/${seg(ns)}`;
  const state = { prefix: query.get('prefix') || '', key: query.get('key'), cursor: null, keys: [], editing: false, entry: null };
  const keyList = h('ul.keys#keys', { 'aria-label': 'Keys' });
  const more = h('button.ghost', { type: 'button', hidden: true }, 'Load more keys');
  const search = h('input#key-prefix', { type: 'search', value: state.prefix, placeholder: 'key prefix, e.g. users/', autocomplete: 'off' });
  const detail = h('section.panel#entry', { 'aria-live': 'polite', 'aria-labelledby': 'entry-h' }, h('h2#entry-h', 'Entry'), h('p.muted', 'Select a key.'));
  const tailList = h('ol.tail#tail', { 'aria-label': 'Events, newest first', reversed: true });
  const tailStatus = h('span.muted#tail-status', 'starting…');
  const pause = h('button.ghost#tail-pause', { type: 'button', 'aria-pressed': 'false' }, 'Pause');
  const tailNote = h('div');

  fill(main,
    h('h1', 'Namespace ', h('span.mono', ns)),
    h('div.cols',
      h('section.panel', { 'aria-labelledby': 'keys-h' },
        h('h2#keys-h', 'Keys'),
        h('form.row#key-search', { role: 'search', onsubmit: (e) => { e.preventDefault(); state.prefix = search.value; ctx.go(`/ns/${encodeURIComponent(ns)}`, { prefix: state.prefix, key: state.key }, true); reloadKeys(); } },
          h('label.sr-only', { for: 'key-prefix' }, 'Key prefix'), search, h('button', { type: 'submit' }, 'Search')),
        keyList, more),
      detail),
    h('section.panel', { 'aria-labelledby': 'tail-h' },
      h('div.row', h('h2#tail-h', 'Live tail'), tailStatus, h('span.spacer'), pause),
      tailNote, tailList));

  // Keys, by prefix, a page at a time.
  const drawKeys = () => {
    fill(keyList, state.keys.map((k) => h('li', h('button', {
      type: 'button', 'aria-current': k === state.key ? 'true' : 'false',
      onclick: () => { state.key = k; ctx.go(`/ns/${encodeURIComponent(ns)}`, { prefix: state.prefix, key: k }, true); drawKeys(); showEntry(); },
    }, k))));
    if (!state.keys.length) keyList.append(h('li.muted', state.prefix ? `No keys start with “${state.prefix}”.` : 'No keys.'));
  };
  const loadKeys = async () => {
    const page = await get(`${base}/kv?limit=100&prefix=${seg(state.prefix)}${state.cursor ? `&cursor=${seg(state.cursor)}` : ''}`);
    state.keys = state.keys.concat(page.items.map((e) => e.key));
    state.cursor = page.next_cursor;
    more.hidden = !state.cursor;
    drawKeys();
  };
  const reloadKeys = async () => { state.keys = []; state.cursor = null; await ctx.act('Listing keys', loadKeys); };
  more.addEventListener('click', () => ctx.act('Listing keys', loadKeys));
  const dotted = (k) => k === '.' || k === '..';

  // One entry: value, metadata, edit, history and diff.
  async function showEntry() {
    state.editing = false;
    const key = state.key;
    if (!key) return;
    const path = `${base}/kv/${seg(key)}`;
    let entry;
    try {
      // Browsers drop `.` and `..` path segments, even percent-encoded: such keys are read
      // through batch/get, and can be changed through batch and txn calls only.
      entry = dotted(key) ? (await call('POST', `${base}/batch/get`, { body: { keys: [key] } })).data.items[0] : await get(path);
      if (!entry) throw new ProblemError(404, { title: 'Not found', detail: 'no such key', code: 'not_found' });
    } catch (e) {
      if (key !== state.key) return;
      const gone = e instanceof ProblemError && e.status === 404;
      fill(detail, h('h2#entry-h', h('span.mono', key)), gone ? h('p.notice', { role: 'status' }, `“${key}” does not exist (any more): deleted or expired.`) : ctx.problemBox(e));
      return;
    }
    if (key !== state.key) return;
    if (dotted(key)) {
      fill(detail, h('h2#entry-h.mono', key), h('p.notice', 'Browsers cannot address a key named “.” or “..” in a URL path: it is shown through batch/get; edit, delete and history need the API’s batch and txn calls.'),
        h('h3', 'Value'), h('pre.json#entry-value', jsonView(entry.value)));
      return;
    }
    state.entry = entry;
    let history = [];
    let historyError = null;
    try { history = (await get(`${path}/history?limit=50`)).items; } catch (e) { historyError = e; }
    const versions = [entry, ...history.filter((v) => v.version !== entry.version)];
    const editBox = h('div');
    const edit = h('button#edit', { type: 'button', onclick: () => openEditor(editBox, entry) }, 'Edit');
    const remove = h('button.danger#delete', {
      type: 'button',
      onclick: async () => {
        if (!(await ctx.confirmAction(`Delete ${key}?`, `Deletes version ${entry.version} of “${key}” (only if it is still the current version).`, 'Delete'))) return;
        if ((await ctx.act('Delete', () => call('DELETE', path, { headers: { 'If-Match': `"${entry.version}"` } }))) === ctx.FAILED) return;
        ctx.toast(`Deleted ${key}`);
        state.key = null;
        fill(detail, h('h2#entry-h', 'Entry'), h('p.muted', `${key} was deleted.`));
        reloadKeys();
      },
    }, 'Delete');
    fill(detail,
      h('div.row', h('h2#entry-h.mono', key), pill(`v${entry.version}`), h('span.spacer'), edit, remove),
      h('dl.meta',
        h('dt', 'version'), h('dd#entry-version', String(entry.version)),
        h('dt', 'revisions'), h('dd', `created at ${entry.create_revision}, changed at ${entry.mod_revision}`),
        h('dt', 'updated'), h('dd', `${time(entry.updated_at)} (${ago(entry.updated_at)})`),
        h('dt', 'created'), h('dd', time(entry.created_at)),
        h('dt', 'TTL'), h('dd', countdown(entry.expires_at)),
        h('dt', 'by'), h('dd', entry.agent_id || h('span.muted', 'no x-agent-id')),
        h('dt', 'why'), h('dd', entry.change_reason || h('span.muted', 'no x-change-reason')),
        h('dt', 'metadata'), h('dd', entry.metadata && Object.keys(entry.metadata).length ? jsonView(entry.metadata) : h('span.muted', 'none'))),
      h('h3', 'Value'), h('pre.json#entry-value', jsonView(entry.value)),
      editBox,
      h('h3', 'History'),
      historyError ? ctx.problemBox(historyError) : historyView(path, key, versions));
  }

  function historyView(path, key, versions) {
    if (versions.length < 2) return h('p.muted', 'Only one version is kept so far.');
    const opt = (v) => h('option', { value: v.version }, `v${v.version} · rev ${v.mod_revision} · ${v.agent_id || 'unknown agent'}`);
    const from = h('select#diff-from', versions.map(opt));
    const to = h('select#diff-to', versions.map(opt));
    from.value = String(versions[1].version);
    to.value = String(versions[0].version);
    const out = h('div#diff');
    const draw = () => {
      const a = versions.find((v) => String(v.version) === from.value);
      const b = versions.find((v) => String(v.version) === to.value);
      const all = jsonDiff(a.value, b.value);
      const rows = all.slice(0, 300);
      const who = (v) => `v${v.version} by ${v.agent_id || 'unknown agent'}${v.change_reason ? ` — “${v.change_reason}”` : ''}, ${time(v.updated_at)}`;
      fill(out,
        h('p.muted', `From ${who(a)}`, h('br'), `to ${who(b)}`),
        rows.length ? h('div.table-wrap', { tabindex: 0 }, h('table.diff', h('caption.sr-only', `Changes from v${a.version} to v${b.version}`),
          h('thead', h('tr', h('th', 'field'), h('th', 'change'), h('th', `v${a.version}`), h('th', `v${b.version}`))),
          h('tbody', rows.map((r) => h('tr',
            h('td.mono', r.path), h('td', r.change),
            h(`td${r.change !== 'added' ? '.removed' : ''}`, r.change === 'added' ? '' : h('code', JSON.stringify(r.from))),
            h(`td${r.change !== 'removed' ? '.added' : ''}`, r.change === 'removed' ? '' : h('code', JSON.stringify(r.to)))))))) : h('p', 'No differences.'),
        all.length > rows.length ? h('p.muted', `… and ${all.length - rows.length} more changes (the first ${rows.length} are shown).`) : null);
    };
    from.addEventListener('change', draw);
    to.addEventListener('change', draw);
    draw();
    const table = h('div.table-wrap', { tabindex: 0 }, h('table', h('thead', h('tr', h('th', 'version'), h('th.num', 'revision'), h('th', 'when'), h('th', 'who'), h('th', 'why'), h('th', h('span.sr-only', 'actions')))),
      h('tbody', versions.map((v, i) => h('tr',
        h('td', `v${v.version}`), h('td.num', String(v.mod_revision)), h('td', time(v.updated_at)),
        h('td', v.agent_id || h('span.muted', '–')), h('td', v.change_reason || h('span.muted', '–')),
        h('td', i === 0 ? pill('current', 'ok') : h('button.ghost', {
          type: 'button', 'aria-label': `Roll back to version ${v.version}`,
          onclick: async () => {
            if (!(await ctx.confirmAction(`Roll back ${key} to v${v.version}?`, `Writes the value of v${v.version} as a new version of “${key}”.`, 'Roll back'))) return;
            const r = await ctx.act('Rollback', () => call('POST', `${path}/rollback`, { body: { version: v.version }, headers: { 'x-change-reason': `rollback to v${v.version} from the dashboard` } }));
            if (r === ctx.FAILED) return;
            ctx.toast(`Rolled back: ${key} is now v${r.data.version}`);
            showEntry();
          },
        }, 'Roll back')))))));
    return h('div', table, h('h3', 'Diff'), h('div.row', h('label', { for: 'diff-from' }, 'From'), from, h('label', { for: 'diff-to' }, 'to'), to), out);
  }

  function openEditor(box, entry) {
    state.editing = true;
    const area = h('textarea#edit-value', { spellcheck: 'false' });
    area.value = JSON.stringify(entry.value, null, 2);
    const reason = h('input#edit-reason', { type: 'text', placeholder: 'why (x-change-reason)', autocomplete: 'off' });
    // A PUT without ttl_ms makes the key permanent: an expiring key keeps its remaining time
    // unless the field is cleared.
    const left = entry.expires_at ? Math.max(1, Date.parse(entry.expires_at) - Date.now()) : null;
    const ttl = h('input#edit-ttl', { type: 'number', min: 1, step: 1, placeholder: 'none: never expires', value: left === null ? '' : String(left) });
    const msg = h('div#edit-message', { 'aria-live': 'assertive' });
    let baseVersion = entry.version;
    const save = h('button#edit-save', { type: 'submit' }, `Save (If-Match: "${baseVersion}")`);
    const form = h('form#edit-form', {
      onsubmit: async (e) => {
        e.preventDefault();
        let value;
        try { value = JSON.parse(area.value); } catch (err) { fill(msg, h('div.problem', { role: 'alert' }, h('strong', 'Not JSON'), h('div', err.message))); return; }
        const headers = { 'If-Match': `"${baseVersion}"` };
        if (reason.value.trim()) headers['x-change-reason'] = reason.value.trim();
        const body = { value };
        if (entry.metadata && Object.keys(entry.metadata).length) body.metadata = entry.metadata;
        if (ttl.value.trim()) body.ttl_ms = Math.max(1, Math.round(Number(ttl.value)));
        try {
          const r = await call('PUT', entryPath(), { body, headers });
          ctx.toast(`Saved ${state.key}: v${r.data.version}`);
          showEntry();
        } catch (err) {
          if (err instanceof ProblemError && err.status === 412) {
            let newer = null;
            try { newer = await get(entryPath()); } catch { /* shown below as unknown */ }
            fill(msg, h('div.notice#conflict', { role: 'alert' },
              h('strong', `Conflict — 412 ${err.title}: `), err.detail,
              h('div', `Your edit was based on v${baseVersion}; the key is now v${err.problem.current_version ?? (newer && newer.version) ?? '?'}. Nothing was written.`),
              newer ? [h('div', 'The newer value:'), h('pre.json#conflict-value', jsonView(newer.value))] : null,
              newer ? h('div.row', h('button.ghost', { type: 'button', onclick: () => { baseVersion = newer.version; entry = newer; area.value = JSON.stringify(newer.value, null, 2); save.textContent = `Save (If-Match: "${baseVersion}")`; fill(msg); } }, 'Edit the newer version')) : null));
          } else {
            fill(msg, ctx.problemBox(err));
          }
        }
      },
    },
    h('h3', 'Edit'),
    h('label', { for: 'edit-value' }, 'Value (JSON)'), area,
    h('label', { for: 'edit-reason' }, 'Reason'), reason,
    h('label', { for: 'edit-ttl' }, 'TTL in ms (kept from the current version; empty: never expires)'), ttl,
    h('div.row', save, h('button.ghost', { type: 'button', onclick: () => { state.editing = false; fill(box); } }, 'Cancel')),
    msg);
    fill(box, form);
    area.focus();
  }
  const entryPath = () => `${base}/kv/${seg(state.key)}`;

  // A busy key is re-read at most every 300 ms, not once per event.
  let refreshTimer = null;
  const refreshEntry = () => {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => { refreshTimer = null; if (!state.editing) showEntry(); }, 300);
  };

  // Live tail: every change of the namespace; pause cancels the watch, resume (and every
  // reconnect) continues from the last revision seen.
  let lastRev = null;
  let epoch = null;
  let paused = false;
  let watch = null;
  const showStatus = () => {
    tailStatus.textContent = paused ? `paused after revision ${lastRev ?? '–'}` : lastRev === null ? 'live (waiting for a change)' : `live, at revision ${lastRev}`;
  };
  const onFrame = (f) => {
    if (f.type === 'event') {
      const e = f.event;
      lastRev = e.revision;
      const key = h('button.link', { type: 'button', onclick: () => { state.key = e.key; ctx.go(`/ns/${encodeURIComponent(ns)}`, { prefix: state.prefix, key: e.key }, true); drawKeys(); showEntry(); } }, e.key);
      tailList.prepend(h('li.fresh', { dataset: { revision: e.revision, key: e.key, kind: e.kind } },
        pill(e.kind, e.kind === 'put' ? 'ok' : e.kind === 'delete' || e.kind === 'expire' || e.kind === 'evict' ? 'bad' : ''),
        h('span.mono', key), h('span', `v${e.version}`), h('span.muted', `rev ${e.revision}`),
        e.agent_id ? h('span', `by ${e.agent_id}`) : null, e.change_reason ? h('span.muted', `“${e.change_reason}”`) : null,
        h('span.muted', time(e.time))));
      while (tailList.children.length > 200) tailList.lastChild.remove();
      if (e.key.startsWith(state.prefix) && e.kind === 'put' && !state.keys.includes(e.key) && !state.cursor) {
        state.keys.push(e.key);
        state.keys.sort();
        drawKeys();
      }
      if ((e.kind === 'delete' || e.kind === 'expire' || e.kind === 'evict') && state.keys.includes(e.key)) {
        state.keys = state.keys.filter((k) => k !== e.key);
        drawKeys();
      }
      if (e.key === state.key && !state.editing) refreshEntry();
    } else if (f.type === 'progress') {
      if (lastRev === null || f.revision > lastRev) lastRev = f.revision;
      if (f.epoch) epoch = f.epoch;
    } else if (f.type === 'compacted') {
      // Continue with what the log still holds: from its oldest retained revision, or from
      // the start of the namespace's new history after a reset.
      fill(tailNote, h('div.notice', { role: 'status' }, f.reason === 'reset'
        ? 'The namespace history was reset (Redis lost it): the tail continues with the new history; events of the old one may be missing.'
        : `Events after revision ${lastRev ?? '?'} and before ${f.compact_revision} are no longer in the change log and were missed; the tail continues from ${f.compact_revision}.`));
      lastRev = f.reason === 'reset' ? 0 : Math.max(0, f.compact_revision - 1);
      epoch = null;
      restart();
      return;
    } else if (f.type === 'error') {
      fill(tailNote, ctx.problemBox(new ProblemError(0, { title: 'Watch refused', detail: f.message, code: f.code })));
    }
    showStatus();
  };
  const start = () => {
    watch = ctx.live.add(() => {
      const op = { op: 'watch', namespace: ns };
      if (lastRev !== null) op.from_revision = lastRev;
      if (epoch) op.epoch = epoch;
      return op;
    }, onFrame);
  };
  const restart = () => { if (watch) watch.cancel(); if (!paused) start(); };
  pause.addEventListener('click', () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
    if (paused) { watch.cancel(); watch = null; } else start();
    showStatus();
  });
  start();
  showStatus();

  await reloadKeys();
  if (state.key) await showEntry();
  return () => { if (watch) watch.cancel(); clearTimeout(refreshTimer); };
}
