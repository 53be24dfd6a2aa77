// Locks of a namespace: holder, fencing token, expiry (counting down), live from the
// `locks.<ns>.*` channel.

import { get, all, seg } from '../api.js';
import { h, fill, num, time, countdown } from '../dom.js';

export default async function locks(main, { args: [nsArg], ctx }) {
  const names = (await all('/v1/namespaces', 1000)).map((n) => n.namespace);
  const ns = nsArg || names[0] || '';
  if (ns && !names.includes(ns)) names.unshift(ns);
  const pick = h('select#lock-ns', names.map((n) => h('option', { value: n }, n)));
  pick.value = ns;
  pick.addEventListener('change', () => ctx.go(`/locks/${encodeURIComponent(pick.value)}`));
  const body = h('tbody');
  fill(main, h('h1', 'Locks'),
    h('section.panel', h('div.row', h('label', { for: 'lock-ns' }, 'Namespace'), pick),
      h('div.table-wrap', { tabindex: 0 }, h('table#locks', h('thead', h('tr', h('th', 'lock'), h('th', 'holder'), h('th.num', 'fencing token'), h('th', 'acquired'), h('th', 'expires'))), body))));
  if (!ns) { body.append(h('tr', h('td', { colspan: 5 }, h('span.muted', 'No namespaces yet.')))); return null; }
  const load = async () => {
    const items = await all(`/v1/ns/${seg(ns)}/locks`, 1000);
    fill(body, items.map((l) => h('tr', { dataset: { lock: l.name } }, h('td.mono', l.name), h('td', l.owner), h('td.num', num(l.fencing_token)), h('td', time(l.acquired_at)), h('td', countdown(l.expires_at)))));
    if (!items.length) body.append(h('tr', h('td', { colspan: 5 }, h('span.muted', `No locks held in ${ns}.`))));
  };
  await load();
  let pending = null;
  const sub = ctx.live.add(() => ({ op: 'subscribe', channel: `locks.${ns}.*` }), (f) => {
    if (f.type === 'message' && !pending) pending = setTimeout(() => { pending = null; load().catch(() => {}); }, 200);
  });
  const timer = setInterval(() => load().catch(() => {}), 5000);
  return () => { sub.cancel(); clearInterval(timer); clearTimeout(pending); };
}
