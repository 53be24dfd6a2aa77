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
    ws.onmessage = (m) => {
      let f;
      try { f = JSON.parse(m.data); } catch { return; }
      const sub = f.id && this.subs.get(f.id);
      if (sub) sub.handler(f);
      else if (f.type === 'error') console.warn('watch socket:', f.code, f.message);
    };
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.setState(e.code === 1008 || e.code === 4001 ? 'unauthorized' : 'reconnecting');
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
