// The dashboard shell: hash routes, the token dialog, theme, toasts, confirmations, and the
// live-connection indicator. Each view renders into <main> and returns a cleanup function.

import { call, onUnauthorized, token, ProblemError } from './api.js';
import { h, fill } from './dom.js';
import { live } from './live.js';
import overview from './views/overview.js';
import { namespaces, namespace } from './views/namespace.js';
import { queues, queue } from './views/queues.js';
import { agents, agent } from './views/agents.js';
import locks from './views/locks.js';
import partitions from './views/partitions.js';

const routes = [
  [/^\/?$/, overview, 'overview', 'Overview'],
  [/^\/ns\/?$/, namespaces, 'ns', 'Namespaces'],
  [/^\/ns\/([^/]+)$/, namespace, 'ns', 'Namespace'],
  [/^\/queues\/?$/, queues, 'queues', 'Queues'],
  [/^\/queues\/([^/]+)$/, queue, 'queues', 'Queue'],
  [/^\/agents\/?$/, agents, 'agents', 'Agents'],
  [/^\/agents\/([^/]+)$/, agent, 'agents', 'Agent'],
  [/^\/locks\/?([^/]*)$/, locks, 'locks', 'Locks'],
  [/^\/partitions\/?$/, partitions, 'partitions', 'Partitions'],
];

const main = document.getElementById('main');
let cleanup = null;
let generation = 0;

/** Current route: path and query of the hash (#/ns/app?key=a). */
export function here() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, q = ''] = raw.split('?');
  return { path, query: new URLSearchParams(q) };
}

/** Go to a hash route (path and query params). `replace` keeps history clean for filters. */
export function go(path, params = {}, replace = false) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== undefined && v !== null && v !== ''));
  const hash = `#${path}${q.toString() ? `?${q}` : ''}`;
  if (replace) { history.replaceState(null, '', hash); } else { location.hash = hash; }
}

async function render() {
  const gen = ++generation;
  if (cleanup) { try { cleanup(); } catch (e) { console.warn(e); } cleanup = null; }
  const { path, query } = here();
  const found = routes.find(([re]) => re.test(path)) || [null, notFound, '', 'Not found'];
  let [re, view, section, title] = found;
  let args = [];
  try {
    args = re ? path.match(re).slice(1).map(decodeURIComponent) : [];
  } catch {
    [re, view, section, title] = [null, notFound, '', 'Not found'];
  }
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  document.title = `${args[0] ? `${args[0]} · ` : ''}${title} · swarmstate`;
  fill(main, h('p.muted', 'Loading…'));
  try {
    const c = await view(main, { args, query, ctx });
    if (gen !== generation) { if (typeof c === 'function') c(); return; }
    cleanup = typeof c === 'function' ? c : null;
  } catch (e) {
    if (gen !== generation) return;
    fill(main, h('h1', title), problemBox(e));
  }
}

function notFound(el) {
  fill(el, h('h1', 'Not found'), h('p', 'No such page. ', h('a', { href: '#/' }, 'Back to the overview')));
}

/** A problem document (or any error) as the user should see it: title, detail, code. */
export function problemBox(e) {
  const p = e instanceof ProblemError ? e : new ProblemError(0, { title: 'Error', detail: String(e && e.message ? e.message : e) });
  return h('div.problem', { role: 'alert' },
    h('strong', p.status ? `${p.status} ${p.title}` : p.title),
    p.detail ? h('div', p.detail) : null,
    p.code ? h('div.muted.mono', `code: ${p.code}`) : null);
}

export function toast(text, kind = '') {
  const t = h(`div.toast${kind ? '.' + kind : ''}`, text);
  document.getElementById('toasts').append(t);
  setTimeout(() => t.remove(), kind === 'bad' ? 8000 : 4000);
}

/** Ask before a destructive action; resolves true when confirmed. */
export function confirmAction(title, text, okLabel = 'Confirm') {
  const d = document.getElementById('confirm-dialog');
  document.getElementById('confirm-title').textContent = title;
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  document.getElementById('confirm-cancel').focus();
  return new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true }));
}

/** What act() answers when the action failed (the failure was shown already). */
export const FAILED = Symbol('failed');

/** Run an action; a failure is shown as a toast with the problem's title and detail and
 * answered as FAILED (never thrown: a click handler has nothing left to do with it). */
export async function act(what, fn) {
  try {
    return await fn();
  } catch (e) {
    const p = e instanceof ProblemError ? e : null;
    toast(`${what} failed: ${p ? `${p.status} ${p.title}${p.detail ? ` — ${p.detail}` : ''}` : e.message}`, 'bad');
    return FAILED;
  }
}

const ctx = { live, toast, confirmAction, act, FAILED, go, here, problemBox };

// Token: asked once (when the service answers 401), kept in sessionStorage.
const dialog = document.getElementById('token-dialog');
function askToken(why) {
  if (dialog.open) return;
  document.getElementById('token-why').textContent = why
    || 'This service requires a token. It is kept in this tab only (sessionStorage) and sent as Authorization: Bearer, and as access_token on the watch socket.';
  document.getElementById('token-input').value = '';
  dialog.showModal();
}
onUnauthorized((e) => askToken(token.get() ? `The token was refused: ${e.detail || e.title}. Enter another one.` : null));
// The socket's token was refused or revoked (an `unauthorized` frame, or a 401 found after
// the socket failed to open): ask for another.
live.onUnauthorized = (why) => askToken(`The watch socket refused the token: ${why}. Enter another one.`);
document.getElementById('token-form').addEventListener('submit', async () => {
  const t = document.getElementById('token-input').value.trim();
  if (!t) return;
  token.set(t);
  // Checked over HTTP before the socket uses it: a refused token asks again (onUnauthorized).
  try { await call('GET', '/v1/status'); } catch (e) { if (e instanceof ProblemError && e.status === 401) return; }
  live.connect();
  render();
});
document.getElementById('token-forget').addEventListener('click', () => {
  token.clear();
  dialog.close();
  live.connect();
  toast('Token forgotten for this tab.');
  render();
});
document.getElementById('token-button').addEventListener('click', () => askToken('Enter a bearer token (kept in this tab only).'));

// Theme: the system's unless switched here (kept in localStorage).
const themeKey = 'swarmstate.theme';
const applyTheme = (t) => { if (t) document.documentElement.dataset.theme = t; else delete document.documentElement.dataset.theme; };
applyTheme(localStorage.getItem(themeKey));
document.getElementById('theme').addEventListener('click', () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === 'dark'
    : matchMedia('(prefers-color-scheme: dark)').matches;
  const next = dark ? 'light' : 'dark';
  localStorage.setItem(themeKey, next);
  applyTheme(next);
});

const status = document.getElementById('live-status');
live.onState((s) => {
  status.textContent = s === 'live' ? '● live' : s === 'connecting' ? 'connecting…' : s === 'unauthorized' ? 'token needed' : 'reconnecting…';
  status.className = `pill ${s === 'live' ? 'ok' : s === 'reconnecting' ? 'warn' : ''}`;
  status.dataset.state = s;
});

window.addEventListener('hashchange', () => { render(); main.focus({ preventScroll: true }); });

// Find out whether a token is needed (public /healthz) before the first call, so the page
// asks for it instead of collecting 401s; the socket opens once there is one.
(async () => {
  let needed = false;
  try { needed = (await call('GET', '/healthz')).data.auth_required === true; } catch (e) { console.warn(e.message); }
  const prompt = () => fill(main, h('h1', 'swarmstate'), h('p', 'This service requires a bearer token. ', h('button.link', { type: 'button', onclick: () => askToken(null) }, 'Enter a token')));
  if (needed && !token.get()) {
    askToken(null);
    prompt();
    return;
  }
  if (needed) {
    // A kept token is checked over HTTP first: a refused one is asked for again (and never
    // ends up in a failed WebSocket URL in the console).
    try { await call('GET', '/v1/status'); } catch (e) { if (e instanceof ProblemError && e.status === 401) { prompt(); return; } }
  }
  live.connect();
  render();
})();
