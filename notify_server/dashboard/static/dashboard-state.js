/**
 * dashboard-state.js: what the dashboard knows about tasks, as plain data.
 *
 * No DOM and no socket: `TaskBoard` takes protocol messages and keeps the
 * running and waiting tasks, the last notifications, the last queue snapshot,
 * the workers and the queue depths. Each `apply*` method returns the names of
 * the parts that changed ('running', 'waiting', 'notifications', 'snapshot',
 * 'workers', 'queues'), so a view redraws only those.
 *
 * Task records (the detail view, the failures view, the per-minute chart):
 * `recordDetails` and `timelineRows` say what a record shows, `formatRuntime`
 * and `formatProgress` how, and `minuteChart` where each minute's bars go.
 */

export const NOTIFICATION_LIMIT = 50;

// A snapshot is taken by a Celery inspect poll that may have started before a
// task or worker event arrived; what an event showed this recently (a running
// or received task, a worker going online or offline) stays as the event left
// it even when the snapshot does not agree yet.
export const SNAPSHOT_GRACE_MS = 5000;

// Finished tasks remembered so that a snapshot older than the finish event
// does not bring them back as running.
const FINISHED_MEMORY = 5000;

const FINISH_EVENTS = new Set(['task_completed', 'task_failed', 'task_revoked']);
const LEAVING_EVENTS = new Set([...FINISH_EVENTS, 'task_retrying', 'task_rejected']);
const NOTIFIED_EVENTS = new Set([
  'task_started', 'task_completed', 'task_failed', 'task_retrying', 'task_revoked',
  'task_rejected',
]);

export class TaskBoard {
  /** @param {() => number} now the clock, in epoch milliseconds. */
  constructor(now = Date.now) {
    this.now = now;
    /** task_id → {taskId, avid, worker, startedAt (ms), percent (null until a progress event), progress, eventAt} */
    this.running = new Map();
    /**
     * [{taskId, avid, worker, kind: 'reserved'|'received'|'scheduled', eta, eventAt}] in the
     * order they will run; 'received' rows come from `task_received` events (eventAt in ms,
     * 0 for rows of a snapshot).
     */
    this.waiting = [];
    /** Newest first, at most NOTIFICATION_LIMIT: {key, kind, taskId, avid, message, at (ms)}. */
    this.notifications = [];
    /** {updatedAt (ms or null), stale, receivedAt (ms)} of the last queue_status, or null. */
    this.snapshot = null;
    /**
     * By name: [{name, online, lastHeartbeat (ms or null: unknown), reason (of the last
     * worker_offline, or null), eventAt (ms of the last worker event, 0 if none)}].
     */
    this.workers = [];
    /** [{name, waiting (messages no worker took yet; null: the broker cannot tell)}]. */
    this.queues = [];
    this._waitingIds = new Set();
    this._finished = new Set();
    this._sequence = 0;
  }

  /** Replace the lists with a `queue_status` snapshot; keeps known progress. */
  applyQueueStatus(data) {
    const now = this.now();
    const listed = new Set();
    for (const entry of data.active_tasks || []) {
      if (this._finished.has(entry.task_id)) continue;
      listed.add(entry.task_id);
      const task = this._runningTask(entry.task_id, entry.avid, now);
      task.worker = entry.worker ?? task.worker;
      if (typeof entry.time_start === 'number') task.startedAt = entry.time_start * 1000;
    }
    for (const [taskId, task] of this.running) {
      if (!listed.has(taskId) && now - task.eventAt > SNAPSHOT_GRACE_MS) this.running.delete(taskId);
    }
    const waitingEntry = (kind) => (entry) => ({
      taskId: entry.task_id, avid: entry.avid, worker: entry.worker, kind, eta: entry.eta ?? null,
      eventAt: 0,
    });
    const scheduled = (data.scheduled_tasks || []).map(waitingEntry('scheduled'))
      .sort((a, b) => (Date.parse(a.eta) || 0) - (Date.parse(b.eta) || 0));
    const reserved = (data.reserved_tasks || []).map(waitingEntry('reserved'));
    const snapshotIds = new Set([...reserved, ...scheduled].map((task) => task.taskId));
    const received = this.waiting.filter((task) => task.kind === 'received'
      && !snapshotIds.has(task.taskId) && now - task.eventAt <= SNAPSHOT_GRACE_MS);
    this.waiting = [...reserved, ...received, ...scheduled]
      .filter((task) => !this.running.has(task.taskId) && !this._finished.has(task.taskId));
    this._waitingIds = new Set(this.waiting.map((task) => task.taskId));
    this.workers = this._snapshotWorkers(data, now);
    this.queues = (data.queues || []).map((queue) => ({
      name: queue.name, waiting: typeof queue.waiting === 'number' ? queue.waiting : null,
    }));
    this.snapshot = {
      updatedAt: typeof data.updated_at === 'number' ? data.updated_at * 1000 : null,
      stale: Boolean(data.stale),
      receivedAt: now,
    };
    return ['running', 'waiting', 'snapshot', 'workers', 'queues'];
  }

  /**
   * Apply one task event (`task_received`, `task_started`, `task_progress`,
   * `task_completed`, `task_rejected`, ...). A `task_received` of a task
   * already running or finished is ignored: Celery's events reach the server
   * by another path than the worker's own, so it may arrive late.
   */
  applyTaskEvent(type, data) {
    const now = this.now();
    const changed = [];
    if (type === 'task_started' || type === 'task_progress') {
      if (this._finished.has(data.task_id)) return changed;
      const task = this._runningTask(data.task_id, data.avid, now);
      task.eventAt = now;
      if (type === 'task_progress') {
        task.percent = Math.max(0, Math.min(100, Number(data.percent) || 0));
        task.progress = data.message ?? '';
      }
      changed.push('running');
      if (type === 'task_started' && this._removeWaiting(data.task_id)) changed.push('waiting');
    } else if (type === 'task_received') {
      if (this._receive(data, now)) changed.push('waiting');
    } else if (LEAVING_EVENTS.has(type)) {
      if (FINISH_EVENTS.has(type)) this._rememberFinished(data.task_id);
      if (this.running.delete(data.task_id)) changed.push('running');
      if (this._removeWaiting(data.task_id)) changed.push('waiting');
    }
    if (NOTIFIED_EVENTS.has(type)) {
      this._notify(type.slice('task_'.length), data.task_id, data.avid, data.message ?? '', now);
      changed.push('notifications');
    }
    return changed;
  }

  /**
   * Apply `worker_online` or `worker_offline`. The worker keeps that state
   * over any snapshot for SNAPSHOT_GRACE_MS; a later snapshot decides.
   */
  applyWorkerEvent(type, data) {
    if (typeof data.worker !== 'string') return [];
    let worker = this.workers.find((known) => known.name === data.worker);
    if (!worker) {
      worker = { name: data.worker, online: false, lastHeartbeat: null, reason: null, eventAt: 0 };
      this.workers = [...this.workers, worker].sort(byName);
    }
    worker.eventAt = this.now();
    if (type === 'worker_online') {
      worker.online = true;
      worker.reason = null;
      if (typeof data.time === 'number') {
        worker.lastHeartbeat = latest(worker.lastHeartbeat, data.time * 1000);
      }
    } else {
      worker.online = false;
      worker.reason = data.reason ?? null;
    }
    return ['workers'];
  }

  /** Events were lost (`resync`): forget every task; the next snapshot refills the lists. */
  applyResync(reason) {
    this.running.clear();
    this.waiting = [];
    this._waitingIds.clear();
    this._notify('resync', null, null, reason, this.now());
    return ['running', 'waiting', 'notifications'];
  }

  // The snapshot's workers: `worker_states`, or from an older server (or one
  // without heartbeats) the names in `workers`, all online; a worker event
  // fresher than SNAPSHOT_GRACE_MS keeps its state and adds its worker. Only
  // worker_offline says why: a snapshot that agrees keeps its reason.
  _snapshotWorkers(data, now) {
    const listed = data.worker_states?.length
      ? data.worker_states.map((state) => ({
        name: state.name,
        online: Boolean(state.online),
        lastHeartbeat: typeof state.last_heartbeat === 'number' ? state.last_heartbeat * 1000 : null,
        reason: null,
        eventAt: 0,
      }))
      : (data.workers || []).map((name) => ({
        name, online: true, lastHeartbeat: null, reason: null, eventAt: 0,
      }));
    const byNameListed = new Map(listed.map((worker) => [worker.name, worker]));
    for (const known of this.workers) {
      const snapshot = byNameListed.get(known.name);
      if (now - known.eventAt <= SNAPSHOT_GRACE_MS) {
        byNameListed.set(known.name, {
          ...known, lastHeartbeat: latest(known.lastHeartbeat, snapshot?.lastHeartbeat ?? null),
        });
      } else if (snapshot && !snapshot.online && !known.online) {
        snapshot.reason = known.reason;
      }
    }
    return [...byNameListed.values()].sort(byName);
  }

  // A waiting 'received' row, unless the task is already listed, running or finished.
  _receive(data, now) {
    const taskId = data.task_id;
    if (this.running.has(taskId) || this._finished.has(taskId) || this._waitingIds.has(taskId)) {
      return false;
    }
    const task = { taskId, avid: data.avid, worker: data.worker ?? null, kind: 'received', eta: null,
      eventAt: now };
    // After the reserved rows: received tasks run after those a worker already held.
    const firstScheduled = this.waiting.findIndex((waiting) => waiting.kind === 'scheduled');
    const at = firstScheduled === -1 ? this.waiting.length : firstScheduled;
    this.waiting = [...this.waiting.slice(0, at), task, ...this.waiting.slice(at)];
    this._waitingIds.add(taskId);
    return true;
  }

  _runningTask(taskId, avid, now) {
    let task = this.running.get(taskId);
    if (!task) {
      task = { taskId, avid, worker: null, startedAt: now, percent: null, progress: '', eventAt: 0 };
      this.running.set(taskId, task);
    }
    if (avid !== undefined && avid !== null) task.avid = avid;
    return task;
  }

  _removeWaiting(taskId) {
    if (!this._waitingIds.delete(taskId)) return false;
    this.waiting = this.waiting.filter((task) => task.taskId !== taskId);
    return true;
  }

  _rememberFinished(taskId) {
    this._finished.add(taskId);
    if (this._finished.size > FINISHED_MEMORY) {
      this._finished.delete(this._finished.values().next().value);
    }
  }

  _notify(kind, taskId, avid, message, at) {
    this._sequence += 1;
    this.notifications.unshift({ key: this._sequence, kind, taskId, avid, message, at });
    if (this.notifications.length > NOTIFICATION_LIMIT) this.notifications.length = NOTIFICATION_LIMIT;
  }
}

function byName(a, b) {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

function latest(a, b) {
  return a === null ? b : b === null ? a : Math.max(a, b);
}

// -- task records ---------------------------------------------------------------

/** Seconds as "0.42 s", "12.3 s", "2:05" or "1:02:05"; "—" when unknown. */
export function formatRuntime(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return '—';
  const value = Math.max(0, seconds);
  if (value < 10) return `${value.toFixed(2)} s`;
  if (value < 60) return `${value.toFixed(1)} s`;
  const whole = Math.round(value);
  const h = Math.floor(whole / 3600);
  const m = Math.floor((whole % 3600) / 60);
  const s = String(whole % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/** A record's `progress` as "40% (4 of 10): step 4"; "—" when none was reported. */
export function formatProgress(progress) {
  if (!progress || typeof progress !== 'object') return '—';
  const percent = typeof progress.percent === 'number' ? `${Math.round(progress.percent)}%` : '?%';
  let text = `${percent} (${progress.current ?? '?'} of ${progress.total ?? '?'})`;
  if (progress.message) text += `: ${progress.message}`;
  return text;
}

/**
 * What the detail view lists for a record, in order: [{key, label, text}].
 * `formatTime(epochSeconds)` writes a time; an unknown value is "—".
 */
export function recordDetails(record, formatTime) {
  const time = (seconds) => (typeof seconds === 'number' ? formatTime(seconds) : '—');
  const text = (value) => (value === null || value === undefined || value === ''
    ? '—' : String(value));
  return [
    { key: 'avid', label: 'Subject', text: text(record.avid) },
    { key: 'name', label: 'Name', text: text(record.name) },
    { key: 'status', label: 'Status', text: text(record.status) },
    { key: 'worker', label: 'Worker', text: text(record.worker) },
    { key: 'received_at', label: 'Received', text: time(record.received_at) },
    { key: 'started_at', label: 'Started', text: time(record.started_at) },
    { key: 'finished_at', label: 'Finished', text: time(record.finished_at) },
    { key: 'runtime', label: 'Runtime', text: formatRuntime(record.runtime) },
    { key: 'progress', label: 'Progress', text: formatProgress(record.progress) },
    { key: 'retries', label: 'Retries', text: String(record.retries ?? 0) },
    { key: 'message', label: record.status === 'failed' ? 'Reason' : 'Message',
      text: text(record.message) },
  ];
}

/**
 * A record's timeline as rows: [{kind ('started', 'progress', ...), at
 * (epoch seconds), offset (seconds since the first event kept, or null), id}].
 */
export function timelineRows(record) {
  const events = Array.isArray(record.events) ? record.events : [];
  const first = events.find((event) => typeof event.time === 'number')?.time ?? null;
  return events.map((event) => ({
    kind: String(event.type ?? '').replace(/^task_/, ''),
    at: event.time,
    offset: first === null || typeof event.time !== 'number' ? null : event.time - first,
    id: event.id,
  }));
}

/**
 * Where the bars of the per-minute chart go in a `width` × `height` box:
 * one column per minute (oldest left), the completed tasks at the bottom and
 * the failed ones stacked on them, scaled so that the busiest minute fills
 * the height. Returns {bars: [{minute, completed, failed, x, width,
 * completedY, completedHeight, failedY, failedHeight}], peak, completed,
 * failed}: `peak` is the busiest minute's total, the others sums.
 */
export function minuteChart(minutes, width, height) {
  const column = width / Math.max(1, minutes.length);
  const peak = Math.max(0, ...minutes.map((m) => m.completed + m.failed));
  const scale = peak ? height / peak : 0;
  const bars = minutes.map((m, index) => {
    const completedHeight = m.completed * scale;
    const failedHeight = m.failed * scale;
    return {
      minute: m.minute,
      completed: m.completed,
      failed: m.failed,
      x: hundredths(index * column + column * 0.1),
      width: hundredths(column * 0.8),
      completedY: hundredths(height - completedHeight),
      completedHeight: hundredths(completedHeight),
      failedY: hundredths(height - completedHeight - failedHeight),
      failedHeight: hundredths(failedHeight),
    };
  });
  const sum = (kind) => minutes.reduce((total, m) => total + m[kind], 0);
  return { bars, peak, completed: sum('completed'), failed: sum('failed') };
}

function hundredths(value) {
  return Math.round(value * 100) / 100;
}
