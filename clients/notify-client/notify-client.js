/**
 * notify-client.js: a dependency-free client for notify-server's task socket.
 *
 * The npm package `notify-client` (clients/notify-client/ of the repository;
 * its types in index.d.ts), and the file the server serves as
 * /static/notify-client.js.
 *
 *     import { NotifyClient } from 'https://example.com/static/notify-client.js';
 *     const client = new NotifyClient();      // wss://example.com/ws/tasks/, found from this file's URL
 *     client.on('task_completed', (data) => console.log(data.avid, data.message));
 *     client.on('state', ({ state }) => console.log(state));
 *     client.connect();
 *     const status = await client.getQueueStatus();
 *     const [record] = await client.subscribe({ task_ids: [taskId] });  // its record, if any
 *     const failed = await client.listTasks({ status: 'failed', limit: 20 });
 *     client.close();
 *
 * Promises:
 * - After any close it did not ask for, the client reconnects by itself,
 *   waiting a random delay in [0, min(maxDelay, minDelay * 2^attempt)]
 *   (exponential backoff with full jitter), so many pages do not return at
 *   the same instant after a server restart. The first message a socket
 *   delivers resets it; an open alone does not, as a server that refuses a
 *   socket may accept the upgrade and close it at once.
 * - It reconnects with `?last_event_id=<id of the last event received>`: the
 *   server replays what was missed, in order and without duplicates, or sends
 *   `resync` when that is no longer possible (the caller reloads its state).
 * - A socket that stays silent for `heartbeat` ms gets a `ping`; if nothing at
 *   all arrives within `heartbeat / 3` ms more, the socket is taken for dead
 *   and replaced, instead of waiting for TCP to notice.
 * - Callbacks run in order of registration; one that throws is reported on
 *   the console and does not stop the others.
 *
 * Token mode (a server with NOTIFY_AUTH_SECRET set), option `getToken`:
 *
 *     const client = new NotifyClient(undefined, {
 *       getToken: async () => (await fetch('/my-app/notify-token')).text(),
 *     });
 *
 * - `getToken()` (async, resolves to a JWT string) is called before every
 *   connect and reconnect; the token goes in the socket URL as `?token=`,
 *   beside `last_event_id`. Without `getToken` no token is sent.
 * - Before the token expires, at max(exp - 30 s, 80 % of its remaining
 *   lifetime) with `exp` read from the token's payload, `getToken()` is
 *   called again and its token sent on the open socket as
 *   `{"action": "refresh", "token": ...}`; the server's `refreshed` reply
 *   (with the new `exp`) schedules the next refresh. A refresh that fails
 *   (`getToken()` rejects, or the server answers `error` `invalid_token`) is
 *   tried again halfway to the expiry, at least 1 s later. When `getToken()`
 *   returns the token already in use, nothing is sent: the server closes the
 *   socket at expiry and the reconnect asks for a token again.
 * - A close with 4001 (the server refused or expired the token; the reason
 *   says which) is followed by a reconnect with backoff, which calls
 *   `getToken()` again. `state` details carry the close `code` and `reason`.
 * - When `getToken()` rejects (or resolves to anything but a non-empty
 *   string), an `error` event `{code: 'token_unavailable', message}` is
 *   emitted and the connect is retried with backoff, for as long as the
 *   client is not closed.
 * - The token is not checked here: `exp` is only read to time the refresh.
 *
 * Task records (servers that keep them; docs/protocol.md 2.2 and 5):
 *
 * - `subscribe(filter)` returns a Promise of the records the server sends
 *   for the named `task_ids` (a `task` message each, before any later event
 *   of those tasks): the client sends a `ping` after the `subscribe` and
 *   resolves on its `pong`, so the list is complete. A task without a record
 *   is not in it; a filter of `avids` only resolves with [] once sent, as no
 *   record comes for a subject; a server without records resolves with [].
 *   Every `task` message also goes to the `on('task', fn)` callbacks.
 * - `getTask(id)`, `listTasks(filters)` and `getMinuteCounts(minutes)` ask
 *   the REST API of the same server: the socket URL with `ws` for `http`
 *   and `ws/tasks/` for `api/tasks/`. In token mode they send the token in
 *   use (or a new one from `getToken()`) as `Authorization: Bearer`. They
 *   reject with an Error whose `status` is the HTTP status (0: no answer)
 *   and whose message is the envelope's.
 */

const SOCKET_PATH = '../ws/tasks/';

/**
 * The codes the server closes a socket with (docs/protocol.md 2.6), named as
 * the server names them: `if (detail.code === CloseCode.UNAUTHORIZED) ...`.
 */
export const CloseCode = Object.freeze({
  GOING_AWAY: 1001,      // shutting down, or no pong: reconnect and resume
  POLICY: 1008,          // actions over the rate limit: reconnect later
  TOO_BIG: 1009,         // an inbound frame over the size limit
  INTERNAL_ERROR: 1011,  // a delivery failed: reconnect and resume
  UNAUTHORIZED: 4001,    // no valid token, or it expired: a new token first
  SLOW: 4008,            // unread output over the limit: reconnect and resume
});

/** The ws:// or wss:// URL of `path` resolved against `base` (an http(s) or ws(s) URL). */
export function socketUrl(path, base) {
  const url = new URL(path, base);
  url.protocol = url.protocol === 'https:' || url.protocol === 'wss:' ? 'wss:' : 'ws:';
  return url.href;
}

/** Full-jitter backoff: a random delay in [0, min(maxDelay, minDelay * 2^attempt)] ms. */
export function reconnectDelay(attempt, minDelay, maxDelay, random = Math.random) {
  return random() * Math.min(maxDelay, minDelay * 2 ** Math.min(attempt, 30));
}

/** The `exp` claim (epoch seconds) of a JWT, read without verifying it; null if it has none. */
export function tokenExpiry(token) {
  const payload = String(token).split('.')[1];
  if (!payload) return null;
  try {
    const base64 = payload.replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(base64), (char) => char.charCodeAt(0));
    const exp = JSON.parse(new TextDecoder().decode(bytes)).exp;
    return Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * The REST URL of the task records (ending in `api/tasks/`) of the server a
 * socket URL belongs to: `wss://host/prefix/ws/tasks/` gives
 * `https://host/prefix/api/tasks/`.
 */
export function restUrl(socket) {
  const url = new URL(socket);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.pathname = `${url.pathname.replace(/ws\/tasks\/?$/, '').replace(/[^/]*$/, '')}api/tasks/`;
  url.search = '';
  url.hash = '';
  return url.href;
}

// setTimeout fires at once for anything longer (about 24.8 days).
const LONGEST_TIMER = 2 ** 31 - 1;

/** Ms from `now` (epoch ms) until a token expiring at `exp` (epoch s) is refreshed. */
export function refreshDelay(exp, now = Date.now()) {
  const remaining = exp * 1000 - now;
  return Math.min(LONGEST_TIMER, Math.max(0, remaining - 30000, 0.8 * remaining));
}

function restError(status, message) {
  const error = new Error(message);
  error.status = status;
  return error;
}

export class NotifyClient {
  /**
   * @param {string|URL} [url] the socket URL; by default `ws/tasks/` of the
   *   server this module was loaded from, so it also works under a path prefix.
   * @param {object} [options]
   * @param {string} [options.lastEventId] resume after this event id on the first connect.
   * @param {number} [options.minDelay=500] ms; the first reconnect waits up to this long.
   * @param {number} [options.maxDelay=15000] ms; no reconnect waits longer.
   * @param {number} [options.heartbeat=30000] ms of silence before a ping; 0 disables.
   * @param {() => Promise<string>} [options.getToken] token mode: resolves to the JWT
   *   for the next connect or refresh (see the module comment).
   */
  constructor(url = socketUrl(SOCKET_PATH, import.meta.url), options = {}) {
    this.url = String(url);
    this.minDelay = options.minDelay ?? 500;
    this.maxDelay = options.maxDelay ?? 15000;
    this.heartbeat = options.heartbeat ?? 30000;
    this._lastEventId = options.lastEventId ?? null;
    this._handlers = new Map();
    this._state = 'idle';
    this._socket = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._silenceTimer = null;
    this._statusWaiters = [];
    this._statusRequested = false;
    this._subscription = null;
    // subscribe() promises: {ids, records, after, until, resolve, reject}.
    this._recordWaiters = [];
    // Pings sent and pongs received on this socket: the pong of the ping sent
    // after a subscribe ends its records (replies keep the actions' order).
    this._pings = 0;
    this._pongs = 0;
    this._getToken = options.getToken ?? null;
    this._dialing = null;
    this._token = null;
    this._offeredToken = null;
    this._refreshTimer = null;
  }

  /** 'idle', 'connecting', 'open', 'reconnecting' (waiting to retry) or 'closed'. */
  get state() {
    return this._state;
  }

  /** The id of the last event received, or null; sent as `last_event_id` on reconnect. */
  get lastEventId() {
    return this._lastEventId;
  }

  /**
   * Call `fn(data, message)` for every message of `type`, or `fn(detail)`
   * for `'state'`: `{state, attempt, delay, code, reason}` on every connection
   * change (`code` and `reason` of the close that caused a `reconnecting`).
   * Returns a function that removes `fn`.
   *
   * The server's types (docs/protocol.md): task events `task_received` (a
   * worker took the task: `worker`), `task_started`, `task_progress`,
   * `task_completed`, `task_failed`, `task_retrying`, `task_revoked`,
   * `task_rejected` (`message`); worker events `worker_online` (`worker`,
   * `time` in epoch seconds) and `worker_offline` (also `reason`); `task`
   * (a task's record: the reply to `subscribe` and `get_task`); and
   * `queue_status`, `resync`, `error`, `pong`, `refreshed`. Events carry an
   * `id`, the resume point. A type this list lacks is delivered all the same,
   * so a newer server's messages need no newer client.
   */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type).delete(fn);
  }

  /** Open the socket (if none is open or opening); returns this client. */
  connect() {
    if (this._state === 'connecting' || this._state === 'open') return this;
    clearTimeout(this._retryTimer);
    this._open();
    return this;
  }

  /** Send one action object; false (and nothing sent) while the socket is not open. */
  send(action) {
    if (this._state !== 'open') return false;
    this._socket.send(JSON.stringify(action));
    if (action?.action === 'ping') this._pings += 1;
    return true;
  }

  /**
   * A Promise of the next `queue_status` data (asked for now, or as soon as
   * the socket opens). Rejected by `close()`. Servers before the Celery event
   * bridge send no `queues` and no `worker_states`: read them as empty lists.
   */
  getQueueStatus() {
    if (this._state === 'closed') return Promise.reject(new Error('NotifyClient is closed'));
    const reply = new Promise((resolve, reject) => this._statusWaiters.push({ resolve, reject }));
    this._requestStatus();
    return reply;
  }

  /**
   * From now on receive task events of these tasks or subjects only
   * (`{task_ids: [...]}` and/or `{avids: [...]}`); kept across reconnects.
   * Returns a Promise of the records the server sends for the named
   * `task_ids`, in the order it sends them (not necessarily that of
   * `task_ids`): sent now, or as soon as the socket opens; when the socket is
   * lost first, those of the next one. Rejected by `close()`; a caller that
   * ignores the Promise is not told.
   */
  subscribe(filter) {
    this._subscription = { action: 'subscribe', ...filter };
    const ids = new Set(Array.isArray(filter?.task_ids) ? filter.task_ids : []);
    const records = new Promise((resolve, reject) => {
      this._recordWaiters.push({ ids, records: [], after: null, until: null, resolve, reject });
    });
    records.catch(() => {});
    if (this._state === 'open') this._sendSubscription([this._recordWaiters.at(-1)]);
    return records;
  }

  /** A Promise of the task's record (`GET /api/tasks/<id>`), or null when it has none. */
  async getTask(taskId) {
    try {
      return await this._rest(encodeURIComponent(String(taskId)));
    } catch (error) {
      if (error.status === 404) return null;
      throw error;
    }
  }

  /**
   * A Promise of one page of records, newest first: `{tasks, next}`
   * (`GET /api/tasks`). `filters` are its parameters (`status`, `name`,
   * `worker`, `q`, `since`, `until`, `limit`, `cursor`: pass `next` for
   * the following page); null, undefined and '' are left out.
   */
  listTasks(filters = {}) {
    return this._rest('', filters);
  }

  /**
   * A Promise of the tasks completed and failed in each of the last
   * `minutes` minutes, oldest first: `[{minute (epoch s), completed, failed}]`
   * (`GET /api/tasks/stats/minutes`).
   */
  async getMinuteCounts(minutes = 60) {
    return (await this._rest('stats/minutes', { minutes })).minutes;
  }

  /** Close for good: no reconnect; pending `getQueueStatus()` and `subscribe()` promises reject. */
  close() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._silenceTimer);
    clearTimeout(this._refreshTimer);
    this._dialing = null;
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(1000, 'client closed');
    for (const waiter of [...this._statusWaiters.splice(0), ...this._recordWaiters.splice(0)]) {
      waiter.reject(new Error('NotifyClient closed'));
    }
    this._setState('closed', {});
  }

  // Ask for a token first in token mode; a close() meanwhile cancels the dial.
  _open() {
    this._setState('connecting', { attempt: this._attempt });
    if (!this._getToken) {
      this._dial(null);
      return;
    }
    const dialing = {};
    this._dialing = dialing;
    this._fetchToken().then((token) => {
      if (dialing === this._dialing) this._dial(token);
    }, (error) => {
      if (dialing !== this._dialing) return;
      this._dialing = null;
      this._emitTokenUnavailable(error);
      this._retryLater({ code: null, reason: 'no token' });
    });
  }

  _dial(token) {
    this._dialing = null;
    this._token = token;
    const url = new URL(this.url);
    if (this._lastEventId !== null) url.searchParams.set('last_event_id', this._lastEventId);
    if (token !== null) url.searchParams.set('token', token);
    const socket = new WebSocket(url.href);
    this._socket = socket;
    this._statusRequested = false;
    this._pings = 0;
    this._pongs = 0;
    socket.onopen = () => this._opened(socket);
    socket.onmessage = (event) => {
      if (socket === this._socket) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (socket === this._socket) this._lost(event.code, event.reason);
    };
  }

  _opened(socket) {
    if (socket !== this._socket) return;
    this._setState('open', {});
    if (this._subscription) this._sendSubscription(this._recordWaiters);
    if (this._statusWaiters.length) this._requestStatus();
    this._expectTraffic();
    if (this._token !== null) this._scheduleRefresh(tokenExpiry(this._token));
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message === null || typeof message !== 'object') return;
    this._attempt = 0;
    this._expectTraffic();
    if (typeof message.id === 'string') this._lastEventId = message.id;
    if (message.type === 'queue_status') {
      this._statusRequested = false;
      for (const waiter of this._statusWaiters.splice(0)) waiter.resolve(message.data);
    } else if (message.type === 'task') {
      this._collectRecord(message.data);
    } else if (message.type === 'pong') {
      this._pongs += 1;
      this._settleRecords();
    } else if (message.type === 'resync') {
      // The id it answered is gone from the history: resuming from it again
      // (a reconnect before the next event) could only earn another resync.
      this._lastEventId = null;
    } else if (message.type === 'refreshed') {
      this._tokenRefreshed(message.data);
    } else if (message.type === 'error') {
      this._refreshRefused(message.data);
    }
    this._emit(message.type, message.data, message);
  }

  _lost(code, reason = '') {
    clearTimeout(this._silenceTimer);
    clearTimeout(this._refreshTimer);
    this._socket = null;
    this._offeredToken = null;
    this._retryLater({ code, reason });
  }

  // The timer is set before the state is announced, so a 'state' callback
  // that calls close() cancels it.
  _retryLater(detail) {
    const delay = reconnectDelay(this._attempt, this.minDelay, this.maxDelay);
    this._attempt += 1;
    this._retryTimer = setTimeout(() => this._open(), delay);
    this._setState('reconnecting', { attempt: this._attempt, delay, ...detail });
  }

  // -- token mode ---------------------------------------------------------------

  /** getToken()'s token; rejects unless it is a non-empty string. */
  async _fetchToken() {
    const token = await this._getToken();
    if (typeof token !== 'string' || !token) {
      throw new TypeError(`getToken gave ${token === '' ? 'an empty string' : typeof token}`);
    }
    return token;
  }

  _emitTokenUnavailable(error) {
    const message = error instanceof Error ? error.message : String(error);
    this._emit('error', { code: 'token_unavailable', message }, undefined);
  }

  _scheduleRefresh(exp) {
    clearTimeout(this._refreshTimer);
    if (exp === null || !Number.isFinite(exp)) return;
    this._refreshTimer = setTimeout(() => this._refresh(), refreshDelay(exp));
  }

  // Again halfway to the expiry of the token in use, at least 1 s from now;
  // past it the server closes the socket (4001) and the reconnect takes over.
  _retryRefresh() {
    const exp = tokenExpiry(this._token);
    if (exp === null) return;
    const remaining = exp * 1000 - Date.now();
    if (remaining <= 1000) return;
    const delay = Math.min(LONGEST_TIMER, Math.max(1000, remaining / 2));
    clearTimeout(this._refreshTimer);
    this._refreshTimer = setTimeout(() => this._refresh(), delay);
  }

  async _refresh() {
    const socket = this._socket;
    let token;
    try {
      token = await this._fetchToken();
    } catch (error) {
      if (socket !== this._socket) return;
      this._emitTokenUnavailable(error);
      this._retryRefresh();
      return;
    }
    if (socket !== this._socket || token === this._token) return;
    this._offeredToken = token;
    if (!this.send({ action: 'refresh', token })) this._offeredToken = null;
  }

  _tokenRefreshed(data) {
    if (this._offeredToken === null) return;
    this._token = this._offeredToken;
    this._offeredToken = null;
    this._scheduleRefresh(Number.isFinite(data?.exp) ? data.exp : tokenExpiry(this._token));
  }

  _refreshRefused(data) {
    if (this._offeredToken === null || data?.code !== 'invalid_token') return;
    this._offeredToken = null;
    this._retryRefresh();
  }

  // -- task records ---------------------------------------------------------------

  // Send the subscription; `waiters` collect the records that come before
  // the pong of a ping sent right after it. Waiters that name no task id
  // are done once it is sent (the server sends records for task ids only),
  // and no ping is sent when no waiter needs one.
  _sendSubscription(waiters) {
    const after = this._pings;
    if (!this.send(this._subscription)) return;
    for (const waiter of waiters.filter((pending) => !pending.ids.size)) {
      this._recordWaiters.splice(this._recordWaiters.indexOf(waiter), 1);
      waiter.resolve([]);
    }
    const waiting = waiters.filter((pending) => this._recordWaiters.includes(pending));
    if (!waiting.length || !this.send({ action: 'ping' })) return;
    for (const waiter of waiting) {
      waiter.records = [];
      waiter.after = after;
      waiter.until = this._pings;
    }
  }

  _collectRecord(record) {
    for (const waiter of this._recordWaiters) {
      if (waiter.until !== null && this._pongs >= waiter.after && this._pongs < waiter.until
          && waiter.ids.has(record?.task_id)) {
        waiter.records.push(record);
      }
    }
  }

  _settleRecords() {
    for (const waiter of [...this._recordWaiters]) {
      if (waiter.until === null || this._pongs < waiter.until) continue;
      this._recordWaiters.splice(this._recordWaiters.indexOf(waiter), 1);
      waiter.resolve(waiter.records);
    }
  }

  // GET `path` under the REST URL with `params`: the envelope's data, or an
  // Error with the HTTP `status` (0 when the request failed) and its message.
  async _rest(path, params = {}) {
    const url = new URL(path, restUrl(this.url));
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== '') {
        url.searchParams.set(name, String(value));
      }
    }
    const headers = {};
    if (this._getToken) headers.Authorization = `Bearer ${this._token ?? await this._fetchToken()}`;
    let response;
    try {
      response = await fetch(url.href, { headers });
    } catch (error) {
      throw restError(0, `${url.pathname}: no answer (${error.message})`);
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const reason = body?.message ?? response.statusText;
      throw restError(response.status, `${response.status} ${reason}`);
    }
    return body?.data;
  }

  _requestStatus() {
    if (!this._statusRequested) this._statusRequested = this.send({ action: 'get_queue_status' });
  }

  // Silence for `heartbeat` ms: ping. Silence for a third of that again: the
  // socket is dead (a sleeping laptop, a dropped NAT entry); replace it now.
  _expectTraffic() {
    clearTimeout(this._silenceTimer);
    if (!this.heartbeat) return;
    this._silenceTimer = setTimeout(() => {
      this.send({ action: 'ping' });
      this._silenceTimer = setTimeout(() => {
        const socket = this._socket;
        this._lost(4000, 'no reply to ping');
        socket.close(4000, 'no reply to ping');
      }, this.heartbeat / 3);
    }, this.heartbeat);
  }

  _setState(state, detail) {
    this._state = state;
    this._emit('state', { state, ...detail });
  }

  _emit(type, payload, message) {
    const handlers = this._handlers.get(type);
    if (!handlers) return;
    for (const fn of [...handlers]) {
      try {
        fn(payload, message);
      } catch (error) {
        console.error(`notify-client: a '${type}' callback failed`, error);
      }
    }
  }
}
