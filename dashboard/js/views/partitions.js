// Partitions and the pool: utilisation against each quota and the pool's capacity.

import { get, all } from '../api.js';
import { h, fill, bytes, num, bar, pill } from '../dom.js';

export default async function partitions(main, { ctx }) {
  // The pool needs an admin token, the partitions list a read one: each shows what it can.
  const [poolR, itemsR] = await Promise.allSettled([get('/v1/pool'), all('/v1/partitions', 1000)]);
  if (itemsR.status === 'rejected') throw itemsR.reason;
  const items = itemsR.value;
  const pool = poolR.status === 'fulfilled' ? poolR.value : null;
  fill(main, h('h1', 'Partitions'),
    h('section.panel', { 'aria-labelledby': 'pool-h' }, h('h2#pool-h', 'Pool'),
      pool ? [
        h('div.muted', `${bytes(pool.allocated_bytes)} of ${bytes(pool.capacity_bytes)} allocated to ${pool.partitions} partitions (${(pool.utilization * 100).toFixed(1)} %)`),
        bar(pool.utilization, 'pool allocated'),
        h('div.muted', `${bytes(pool.used_bytes)} written`),
        bar(pool.used_bytes / Math.max(1, pool.capacity_bytes), 'pool written')] : ctx.problemBox(poolR.reason)),
    h('section.panel', h('div.table-wrap', { tabindex: 0 }, h('table#partitions',
      h('thead', h('tr', h('th', 'partition'), h('th', 'owner'), h('th', 'tier'), h('th', 'used of quota'), h('th.num', 'keys'), h('th.num', 'quota'))),
      h('tbody', items.length ? items.map((p) => h('tr', { dataset: { partition: p.name } },
        h('td', h('a', { href: `#/ns/${encodeURIComponent(p.name)}` }, p.name)),
        h('td', h('a', { href: `#/agents/${encodeURIComponent(p.owner_agent)}` }, p.owner_agent)),
        h('td', pill(p.tier)),
        h('td', bar(p.utilization, `${p.name} used of quota`), h('span.muted', `${bytes(p.used_bytes)} (${(p.utilization * 100).toFixed(1)} %)`)),
        h('td.num', p.max_keys ? `${num(p.key_count)} / ${num(p.max_keys)}` : num(p.key_count)),
        h('td.num', bytes(p.quota_bytes)))) : h('tr', h('td', { colspan: 6 }, h('span.muted', 'No partitions.'))))))));
}
