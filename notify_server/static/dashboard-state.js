/**
 * dashboard-state.js: what the dashboard knows about tasks, as plain data.
 *
 * No DOM and no socket: `TaskBoard` takes protocol messages and keeps the
 * running and waiting tasks, the last notifications and the last queue
 * snapshot. Each `apply*` method returns the names of the parts that changed
 * ('running', 'waiting', 'notifications', 'snapshot'), so a view redraws only those.
 */

export const NOTIFICATION_LIMIT = 50;

// A snapshot is taken by a Celery inspect poll that may have started before a
// task event arrived; a task seen in an event this recently stays running even
// when the snapshot does not list it yet.
export const SNAPSHOT_GRACE_MS = 5000;

// Finished tasks remembered so that a snapshot older than the finish event
// does not bring them back as running.
const FINISHED_MEMORY = 5000;

const FINISH_EVENTS = new Set(['task_completed', 'task_failed', 'task_revoked']);
const NOTIFIED_EVENTS = new Set([
  'task_started', 'task_completed', 'task_failed', 'task_retrying', 'task_revoked',
]);

export class TaskBoard {
  /** @param {() => number} now the clock, in epoch milliseconds. */
  constructor(now = Date.now) {
    this.now = now;
    /** task_id → {taskId, avid, worker, startedAt (ms), percent (null until a progress event), progress, eventAt} */
    this.running = new Map();
    /** [{taskId, avid, worker, kind: 'reserved'|'scheduled', eta}] in the order they will run. */
    this.waiting = [];
    /** Newest first, at most NOTIFICATION_LIMIT: {key, kind, taskId, avid, message, at (ms)}. */
    this.notifications = [];
    /** {workers, updatedAt (ms or null), stale, receivedAt (ms)} of the last queue_status, or null. */
    this.snapshot = null;
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
    });
    const scheduled = (data.scheduled_tasks || []).map(waitingEntry('scheduled'))
      .sort((a, b) => (Date.parse(a.eta) || 0) - (Date.parse(b.eta) || 0));
    this.waiting = [...(data.reserved_tasks || []).map(waitingEntry('reserved')), ...scheduled]
      .filter((task) => !this.running.has(task.taskId) && !this._finished.has(task.taskId));
    this._waitingIds = new Set(this.waiting.map((task) => task.taskId));
    this.snapshot = {
      workers: data.workers || [],
      updatedAt: typeof data.updated_at === 'number' ? data.updated_at * 1000 : null,
      stale: Boolean(data.stale),
      receivedAt: now,
    };
    return ['running', 'waiting', 'snapshot'];
  }

  /** Apply one task event (`task_started`, `task_progress`, `task_completed`, ...). */
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
    } else if (FINISH_EVENTS.has(type) || type === 'task_retrying') {
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

  /** Events were lost (`resync`): forget every task; the next snapshot refills the lists. */
  applyResync(reason) {
    this.running.clear();
    this.waiting = [];
    this._waitingIds.clear();
    this._notify('resync', null, null, reason, this.now());
    return ['running', 'waiting', 'notifications'];
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
