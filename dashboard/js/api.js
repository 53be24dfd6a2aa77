// The public HTTP API, with the bearer token kept in sessionStorage. Every failure becomes a
// ProblemError carrying the problem document's title, detail and code.

const KEY = 'swarmstate.token';

export const token = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ProblemError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.title = problem.title || `HTTP ${status}`;
    this.detail = problem.detail || '';
    this.code = problem.code || '';
  }
}

let unauthorized = () => {};
/** Called with the error when an answer is 401 (the page asks for a token). */
export function onUnauthorized(fn) { unauthorized = fn; }

/** Percent-encode one path segment (keys may hold '/', '?', '#', spaces…). */
export const seg = (s) => encodeURIComponent(s);

/**
 * fetch() against this origin: JSON in and out. Returns {data, status, headers}; throws
 * ProblemError for 4xx/5xx (and for a service that does not answer).
 */
export async function call(method, path, { body, headers = {} } = {}) {
  const h = { Accept: 'application/json, application/problem+json', ...headers };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  if (body !== undefined && !h['Content-Type']) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) });
  } catch (e) {
    throw new ProblemError(0, { title: 'The service did not answer', detail: `${method} ${path}: ${e.message}` });
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!res.ok) {
    const p = data && typeof data === 'object' ? data : { title: res.statusText || `HTTP ${res.status}`, detail: String(data || '') };
    const err = new ProblemError(res.status, p);
    if (res.status === 401) unauthorized(err);
    throw err;
  }
  return { data, status: res.status, headers: res.headers };
}

export const get = async (path) => (await call('GET', path)).data;
export const post = async (path, body = {}) => (await call('POST', path, { body })).data;
export const del = async (path, headers) => (await call('DELETE', path, { headers })).data;

/** Every page of a listing ({items, next_cursor}), up to `max` items. */
export async function all(path, max = 1000) {
  const sep = path.includes('?') ? '&' : '?';
  let items = [];
  let cursor = null;
  do {
    const page = await get(`${path}${sep}limit=${Math.min(1000, max)}${cursor ? `&cursor=${seg(cursor)}` : ''}`);
    items = items.concat(page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}
