// Small DOM helpers: h() builds elements, formatters, a collapsible JSON view and a JSON diff.

/** h('tag.class#id', {attr: value, onclick: fn}, ...children) → Element. */
export function h(spec, attrs, ...children) {
  const [, tag = 'div', rest = ''] = spec.match(/^([a-z0-9-]*)(.*)$/i);
  const el = document.createElement(tag || 'div');
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === '.') el.classList.add(part.slice(1));
    else el.id = part.slice(1);
  }
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${u[i]}`;
}

export function num(n) {
  return n === null || n === undefined ? '–' : Number(n).toLocaleString('en');
}

/** "3.2 s", "4 min", "2 h" for a duration in ms. */
export function dur(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  const s = Math.abs(ms) / 1000;
  const out = s < 10 ? `${s.toFixed(1)} s` : s < 120 ? `${Math.round(s)} s`
    : s < 7200 ? `${Math.round(s / 60)} min` : s < 172800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return ms < 0 ? `-${out}` : out;
}

/** How long ago an RFC 3339 time was ("3.2 s ago"). */
export function ago(t) {
  if (!t) return '–';
  return `${dur(Date.now() - Date.parse(t))} ago`;
}

export function time(t) {
  if (!t) return '–';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
}

/** A <time> that shows how long until `t`, refreshed every second while on the page. */
export function countdown(t, label = 'expires in') {
  const el = h('time', { datetime: t || '' });
  if (!t) { el.textContent = 'never'; return el; }
  const tick = () => {
    if (!el.isConnected && el.dataset.started) { clearInterval(timer); return; }
    el.dataset.started = '1';
    const left = Date.parse(t) - Date.now();
    el.textContent = left > 0 ? `${label} ${dur(left)}` : 'expired';
    el.className = left > 0 && left < 10000 ? 'pill warn' : left <= 0 ? 'pill bad' : 'pill';
  };
  const timer = setInterval(tick, 1000);
  tick();
  return el;
}

/** A collapsible, syntax-coloured view of a JSON value (objects and arrays fold). */
export function jsonView(v, depth = 0) {
  const root = h('div.jv.mono');
  root.append(node(v, null, depth));
  return root;
}

function node(v, key, depth) {
  const label = key === null ? [] : [h('span.k', JSON.stringify(key)), ': '];
  if (v !== null && typeof v === 'object') {
    const entries = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
    const [open, close] = Array.isArray(v) ? ['[', ']'] : ['{', '}'];
    if (!entries.length) return h('div', label, open + close);
    const d = h('details', depth < 3 ? { open: true } : {});
    d.append(h('summary', label, open, h('span.muted', ` ${entries.length} ${Array.isArray(v) ? 'items' : 'keys'}`)));
    for (const [k, x] of entries) d.append(node(x, Array.isArray(v) ? null : k, depth + 1));
    d.append(h('div', close));
    return d;
  }
  const cls = typeof v === 'string' ? 's' : typeof v === 'number' ? 'n' : '';
  return h('div', label, h(`span${cls ? '.' + cls : ''}`, JSON.stringify(v)));
}

/**
 * The differences between two JSON values, as rows {path, change: added|removed|changed, from, to}.
 * Objects are compared member by member, arrays item by item; anything else by value.
 */
export function jsonDiff(a, b, path = '') {
  const isObj = (x) => x !== null && typeof x === 'object';
  if (isObj(a) && isObj(b) && Array.isArray(a) === Array.isArray(b)) {
    const keys = Array.isArray(a)
      ? [...Array(Math.max(a.length, b.length)).keys()]
      : [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    const rows = [];
    for (const k of keys) {
      const p = Array.isArray(a) ? `${path}[${k}]` : `${path}/${k}`;
      const inA = Array.isArray(a) ? k < a.length : Object.hasOwn(a, k);
      const inB = Array.isArray(b) ? k < b.length : Object.hasOwn(b, k);
      if (inA && !inB) rows.push({ path: p, change: 'removed', from: a[k] });
      else if (!inA && inB) rows.push({ path: p, change: 'added', to: b[k] });
      else rows.push(...jsonDiff(a[k], b[k], p));
    }
    return rows;
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [{ path: path || '(value)', change: 'changed', from: a, to: b }];
}

/** An SVG sparkline of the numbers given (scaled to their own maximum). */
export function sparkline(values, label) {
  if (values.length === 1) values = [values[0], values[0]];
  const w = 120; const hgt = 32;
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${hgt - (v / max) * (hgt - 2) - 1}`).join(' ');
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${hgt}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${label}: last ${values.length} samples, latest ${values.at(-1) ?? 0}, max ${max}`);
  const pl = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  pl.setAttribute('points', pts || `0,${hgt - 1} ${w},${hgt - 1}`);
  svg.append(pl);
  return svg;
}

/** A utilisation bar (0..1) with its text alternative. */
export function bar(fraction, label) {
  const f = Math.max(0, Math.min(1, Number(fraction) || 0));
  const cls = f >= 0.9 ? '.bad' : f >= 0.75 ? '.warn' : '';
  const el = h(`div.bar${cls}`, { role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(f * 100), 'aria-label': label });
  const fillEl = h('span');
  fillEl.style.width = `${(f * 100).toFixed(1)}%`;
  el.append(fillEl);
  return el;
}

export function pill(text, kind) {
  return h(`span.pill${kind ? '.' + kind : ''}`, text);
}
