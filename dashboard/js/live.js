// One WebSocket to /v1/watch for the whole page. Views add ops (watch, subscribe, queue,
// stats) with a handler; after a reconnect every op is sent again — watches resume from the
// last revision they saw, so nothing is missed (or the server answers `compacted`).

import { token } from './api.js';

export class Live {
  constructor() {
    this.subs = new Map();
    this.ws = null;
    this.state = 'connecting';
    this.listeners = new Set();
    this.retry = 500;
    this.seq = 0;
    this.timer = null;
    this.onUnauthorized = () => {};
  }

  url() {
    const u = new URL('/v1/watch', location.href);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    const t = token.get();
    if (t) u.searchParams.set('access_token', t);
    return u.toString();
  }

  /** Open (or re-open, e.g. with a new token) the socket. */
  connect() {
    clearTimeout(this.timer);
    if (this.ws) { this.ws.onclose = null; this.ws.close(); }
    this.setState('connecting');
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = () => {
      this.retry = 500;
      this.setState('live');
      for (const sub of this.subs.values()) this.send(sub.op());
    };
    let opened = false;
    ws.addEventListener('open', () => { opened = true; });
    ws.onmessage = (m) => {
      let f;
      try { f = JSON.parse(m.data); } catch { return; }
      if (f.type === 'error' && f.code === 'unauthorized') {
        // The token was removed or changed in the tokens file: nothing more will work.
        this.setState('unauthorized');
        this.onUnauthorized(f.message);
      }
      const sub = f.id && this.subs.get(f.id);
      if (sub) sub.handler(f);
    };
    ws.onclose = async () => {
      if (this.ws !== ws) return;
      if (!opened) {
        // The upgrade failed: a refused token (401) is not retried until a new one is given.
        const r = await fetch('/v1/status', { headers: token.get() ? { Authorization: `Bearer ${token.get()}` } : {} }).catch(() => null);
        if (this.ws !== ws) return;
        if (r && r.status === 401) {
          this.setState('unauthorized');
          this.onUnauthorized('401 Unauthorized');
          return;
        }
      }
      this.setState('reconnecting');
      this.timer = setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 10000);
    };
  }

  setState(s) {
    this.state = s;
    for (const fn of this.listeners) fn(s);
  }

  onState(fn) { this.listeners.add(fn); fn(this.state); return () => this.listeners.delete(fn); }

  send(op) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(op));
  }

  /**
   * Add an op: `op` is a function returning the frame to send (called again on every
   * reconnect), `handler` gets every frame with its id. Returns {id, cancel()}.
   */
  add(op, handler) {
    const id = `d${++this.seq}`;
    const sub = { op: () => ({ ...op(), id }), handler };
    this.subs.set(id, sub);
    this.send(sub.op());
    return {
      id,
      cancel: () => {
        if (this.subs.delete(id)) this.send({ op: 'cancel', id });
      },
    };
  }
}

export const live = new Live();
