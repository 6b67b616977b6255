/**
 * notify-client.js: a dependency-free client for notify-server's task socket.
 *
 *     import { NotifyClient } from 'https://example.com/static/notify-client.js';
 *     const client = new NotifyClient();      // wss://example.com/ws/tasks/, found from this file's URL
 *     client.on('task_completed', (data) => console.log(data.avid, data.message));
 *     client.on('state', ({ state }) => console.log(state));
 *     client.connect();
 *     const status = await client.getQueueStatus();
 *     client.close();
 *
 * Promises:
 * - After any close it did not ask for, the client reconnects by itself,
 *   waiting a random delay in [0, min(maxDelay, minDelay * 2^attempt)]
 *   (exponential backoff with full jitter), so many pages do not return at
 *   the same instant after a server restart. A successful open resets it.
 * - It reconnects with `?last_event_id=<id of the last event received>`: the
 *   server replays what was missed, in order and without duplicates, or sends
 *   `resync` when that is no longer possible (the caller reloads its state).
 * - A socket that stays silent for `heartbeat` ms gets a `ping`; if nothing at
 *   all arrives within `heartbeat / 3` ms more, the socket is taken for dead
 *   and replaced, instead of waiting for TCP to notice.
 * - Callbacks run in order of registration; one that throws is reported on
 *   the console and does not stop the others.
 */

const SOCKET_PATH = '../ws/tasks/';

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

export class NotifyClient {
  /**
   * @param {string|URL} [url] the socket URL; by default `ws/tasks/` of the
   *   server this module was loaded from, so it also works under a path prefix.
   * @param {object} [options]
   * @param {string} [options.lastEventId] resume after this event id on the first connect.
   * @param {number} [options.minDelay=500] ms; the first reconnect waits up to this long.
   * @param {number} [options.maxDelay=15000] ms; no reconnect waits longer.
   * @param {number} [options.heartbeat=30000] ms of silence before a ping; 0 disables.
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
   * Call `fn(data, message)` for every message of `type` (`task_started`,
   * `task_progress`, `queue_status`, `resync`, ...), or `fn(detail)` for
   * `'state'`: `{state, attempt, delay, code}` on every connection change.
   * Returns a function that removes `fn`.
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
    return true;
  }

  /**
   * A Promise of the next `queue_status` data (asked for now, or as soon as
   * the socket opens). Rejected by `close()`.
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
   */
  subscribe(filter) {
    this._subscription = { action: 'subscribe', ...filter };
    this.send(this._subscription);
  }

  /** Close for good: no reconnect; pending `getQueueStatus()` promises reject. */
  close() {
    clearTimeout(this._retryTimer);
    clearTimeout(this._silenceTimer);
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(1000, 'client closed');
    for (const waiter of this._statusWaiters.splice(0)) {
      waiter.reject(new Error('NotifyClient closed'));
    }
    this._setState('closed', {});
  }

  _open() {
    const url = new URL(this.url);
    if (this._lastEventId !== null) url.searchParams.set('last_event_id', this._lastEventId);
    const socket = new WebSocket(url.href);
    this._socket = socket;
    this._statusRequested = false;
    socket.onopen = () => this._opened(socket);
    socket.onmessage = (event) => {
      if (socket === this._socket) this._receive(event.data);
    };
    socket.onclose = (event) => {
      if (socket === this._socket) this._lost(event.code);
    };
    this._setState('connecting', { attempt: this._attempt });
  }

  _opened(socket) {
    if (socket !== this._socket) return;
    this._attempt = 0;
    this._setState('open', {});
    if (this._subscription) this.send(this._subscription);
    if (this._statusWaiters.length) this._requestStatus();
    this._expectTraffic();
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message === null || typeof message !== 'object') return;
    this._expectTraffic();
    if (typeof message.id === 'string') this._lastEventId = message.id;
    if (message.type === 'queue_status') {
      this._statusRequested = false;
      for (const waiter of this._statusWaiters.splice(0)) waiter.resolve(message.data);
    }
    this._emit(message.type, message.data, message);
  }

  _lost(code) {
    clearTimeout(this._silenceTimer);
    this._socket = null;
    const delay = reconnectDelay(this._attempt, this.minDelay, this.maxDelay);
    this._attempt += 1;
    this._setState('reconnecting', { attempt: this._attempt, delay, code });
    this._retryTimer = setTimeout(() => this._open(), delay);
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
        this._lost(4000);
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
