/**
 * dashboard.js: the page at `/`, drawn from a `TaskBoard` fed by a `NotifyClient`.
 *
 * Messages only update the board and mark parts dirty; one
 * requestAnimationFrame draws each dirty part once, however many events
 * arrived. Lists are keyed by task id, so an event touches one row's text
 * and never rebuilds the others.
 *
 * Token mode: `/?token=JWT` gives the page its token. It is taken out of the
 * address bar at once (history.replaceState: no screenshot or copied link
 * shows it) and lives only in this module, which hands it to the client for
 * every connect. A socket the server closes with 4001 (token required,
 * expired or invalid) stops the page: the same token, or none, would be
 * refused again, so a banner says why and how to get in instead of retrying.
 *
 * Task records come from the REST API through the same client (and token):
 * a click on any task row opens its record in a dialog, kept current while
 * the task's events arrive; "Recent failures" pages through the failed
 * records, filtered by task name; the chart counts completed and failed
 * tasks per minute over the last hour, drawn as SVG by this module.
 */

import { NotifyClient, socketUrl } from './notify-client.js';
import {
  TaskBoard, minuteChart, recordDetails, timelineRows, formatRuntime,
} from './dashboard-state.js';

/** The `token` query parameter (null if absent or empty), removed from the address bar. */
function takeTokenFromAddress() {
  const address = new URL(location.href);
  if (!address.searchParams.has('token')) return null;
  const token = address.searchParams.get('token');
  address.searchParams.delete('token');
  history.replaceState(history.state, '', address.href);
  return token || null;
}

const token = takeTokenFromAddress();
const board = new TaskBoard();
const client = new NotifyClient(socketUrl('ws/tasks/', location.href),
  token ? { getToken: async () => token } : {});
const element = (id) => document.getElementById(id);

// -- keyed rows -------------------------------------------------------------

/** A list element whose rows are kept by key: added, patched, moved, removed. */
class KeyedList {
  constructor(list, build, patch) {
    this.list = list;
    this.build = build;
    this.patch = patch;
    this.rows = new Map();
  }

  /** Make the list show `items` in this order; returns nothing. */
  show(items, keyOf) {
    const wanted = new Set();
    let cursor = this.list.firstElementChild;
    for (const item of items) {
      const key = keyOf(item);
      wanted.add(key);
      let row = this.rows.get(key);
      if (!row) {
        row = this.build(item);
        this.rows.set(key, row);
      }
      this.patch(row, item);
      if (row.root === cursor) cursor = cursor.nextElementSibling;
      else this.list.insertBefore(row.root, cursor);
    }
    for (const [key, row] of this.rows) {
      if (!wanted.has(key)) {
        row.root.remove();
        this.rows.delete(key);
      }
    }
  }
}

function make(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.append(node);
  return node;
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

// -- formatting ---------------------------------------------------------------

function formatDuration(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = String(seconds % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/** "N s" under a minute, else "m:ss" or "h:mm:ss"; never negative (clocks differ). */
function formatAge(ms) {
  const seconds = Math.max(0, Math.round(ms / 1000));
  return seconds < 60 ? `${seconds} s` : formatDuration(seconds * 1000);
}

function formatClock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

/** Epoch seconds as the local date and time, e.g. "12/3/2026, 11:36:17". */
function formatDateTime(seconds) {
  return new Date(seconds * 1000).toLocaleString([], { hour12: false });
}

function shortId(taskId) {
  return String(taskId).slice(0, 8);
}

// -- running ------------------------------------------------------------------

// The cells every task row starts with: its subject, short id and worker.
function taskRow(task) {
  const root = make('li', 'task');
  root.dataset.taskId = task.taskId;
  root.tabIndex = 0;
  const name = make('span', 'name', root);
  const avid = make('span', 'avid', name);
  const id = make('span', 'task-id', name);
  id.textContent = shortId(task.taskId);
  id.title = task.taskId;
  const worker = make('span', 'worker', root);
  return { root, avid, worker };
}

const running = new KeyedList(element('running'), (task) => {
  const { root, avid, worker } = taskRow(task);
  const elapsed = make('span', 'elapsed', root);
  elapsed.title = 'running for';
  const bar = make('span', 'bar', root);
  bar.setAttribute('role', 'progressbar');
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  const fill = make('span', 'fill', bar);
  const percent = make('span', 'percent', root);
  const step = make('span', 'step', root);
  return { root, avid, worker, elapsed, bar, fill, percent, step, shownPercent: undefined };
}, (row, task) => {
  setText(row.avid, String(task.avid ?? ''));
  setText(row.worker, task.worker ?? '');
  setText(row.elapsed, formatDuration(Date.now() - task.startedAt));
  setText(row.step, task.progress);
  if (row.shownPercent === task.percent) return;
  row.shownPercent = task.percent;
  if (task.percent === null) {
    row.bar.removeAttribute('aria-valuenow');
    row.bar.classList.add('unknown');
    row.percent.textContent = '';
  } else {
    row.bar.setAttribute('aria-valuenow', String(task.percent));
    row.bar.classList.remove('unknown');
    row.fill.style.width = `${task.percent}%`;
    row.percent.textContent = `${Math.round(task.percent)}%`;
  }
});

function drawRunning() {
  const tasks = [...board.running.values()]
    .sort((a, b) => a.startedAt - b.startedAt || (a.taskId < b.taskId ? -1 : 1));
  running.show(tasks, (task) => task.taskId);
  setText(element('running-count'), String(tasks.length));
  document.title = tasks.length ? `(${tasks.length}) Celery tasks` : 'Celery tasks';
}

function tickElapsed() {
  const now = Date.now();
  for (const [taskId, row] of running.rows) {
    const task = board.running.get(taskId);
    if (task) setText(row.elapsed, formatDuration(now - task.startedAt));
  }
}

// -- waiting ------------------------------------------------------------------

const waiting = new KeyedList(element('waiting'), (task) => {
  const { root, avid, worker } = taskRow(task);
  const kind = make('span', 'kind', root);
  return { root, avid, worker, kind };
}, (row, task) => {
  setText(row.avid, String(task.avid ?? ''));
  setText(row.worker, task.worker ?? '');
  row.root.dataset.kind = task.kind;
  const eta = Date.parse(task.eta);
  setText(row.kind, task.kind === 'scheduled' && eta ? `scheduled for ${formatClock(eta)}` : task.kind);
  row.kind.title = task.kind === 'received' ? 'a worker took it; it waits there to run' : '';
});

function drawWaiting() {
  waiting.show(board.waiting, (task) => task.taskId);
  setText(element('waiting-count'), String(board.waiting.length));
}

// -- notifications ------------------------------------------------------------

const notifications = new KeyedList(element('notifications'), (note) => {
  const root = make('li', 'event');
  root.dataset.kind = note.kind;
  if (note.taskId) {
    root.dataset.taskId = note.taskId;
    root.tabIndex = 0;
  }
  make('time', 'at', root).textContent = formatClock(note.at);
  make('span', 'kind', root).textContent = note.kind;
  make('span', 'avid', root).textContent = String(note.avid ?? '');
  make('span', 'message', root).textContent = note.message;
  return { root };
}, () => {});

function drawNotifications() {
  notifications.show(board.notifications, (note) => note.key);
}

// -- workers and queues ---------------------------------------------------------

const workers = new KeyedList(element('workers'), (worker) => {
  const root = make('li', 'chip worker-state');
  root.dataset.worker = worker.name;
  make('span', 'worker-name', root).textContent = worker.name;
  root.append(' '); // read as "name status", not "namestatus"; flex layout ignores it
  const beat = make('span', 'beat', root);
  return { root, beat };
}, (row, worker) => {
  row.root.dataset.online = String(worker.online);
  setText(row.beat, workerStatus(worker, Date.now()));
  row.beat.title = worker.lastHeartbeat === null ? ''
    : `last heartbeat at ${formatClock(worker.lastHeartbeat)}`;
});

/** "online, last heartbeat 3 s ago", "offline (shutdown), last heartbeat 1:05 ago", "online". */
function workerStatus(worker, now) {
  let text = worker.online ? 'online' : 'offline';
  if (!worker.online && worker.reason) text += ` (${worker.reason})`;
  if (worker.lastHeartbeat !== null) {
    text += `, last heartbeat ${formatAge(now - worker.lastHeartbeat)} ago`;
  }
  return text;
}

function drawWorkers() {
  workers.show(board.workers, (worker) => worker.name);
}

const queues = new KeyedList(element('queues'), (queue) => {
  const root = make('li', 'chip queue');
  root.dataset.queue = queue.name;
  make('span', 'queue-name', root).textContent = queue.name;
  root.append(' ');
  const depth = make('span', 'depth', root);
  return { root, depth };
}, (row, queue) => {
  const known = queue.waiting !== null;
  row.root.dataset.known = String(known);
  setText(row.depth, known ? `${queue.waiting} waiting` : 'n/a');
  row.depth.title = known ? 'messages in the broker that no worker took yet'
    : 'not known: the broker is not Redis';
});

function drawQueues() {
  queues.show(board.queues, (queue) => queue.name);
}

// -- snapshot and connection -----------------------------------------------------

function drawSnapshot() {
  const snapshot = board.snapshot;
  if (!snapshot) return;
  const box = element('snapshot');
  box.dataset.stale = String(snapshot.stale);
  let text;
  if (snapshot.updatedAt === null) {
    text = 'No queue snapshot yet: no Celery worker has answered.';
  } else {
    const age = formatAge(Date.now() - snapshot.updatedAt);
    text = `Queue lists as of ${formatClock(snapshot.updatedAt)} (${age} ago)`;
    if (snapshot.stale) text += ': stale, the last poll failed; showing the last good lists';
  }
  setText(element('snapshot-text'), text);
}

function drawConnection({ state, attempt, delay }) {
  const box = element('connection');
  box.dataset.state = state;
  const labels = {
    connecting: attempt ? `Connecting (attempt ${attempt + 1})…` : 'Connecting…',
    open: 'Live',
    reconnecting: `Disconnected; retrying in ${((delay ?? 0) / 1000).toFixed(1)} s`,
    closed: 'Closed',
  };
  setText(box, labels[state] ?? state);
}

// The server refused the socket's token (close code 4001, reason from the
// contract: "token required", "token expired" or "invalid token: <why>").
const TOKEN_REFUSED = 4001;

function drawTokenRefused(reason) {
  const banner = element('auth-banner');
  let text;
  if (reason === 'token required') {
    text = 'Token required: this server shows tasks only to holders of a token. '
      + 'Open this page with ?token=<your token> in its address.';
  } else if (reason === 'token expired') {
    text = 'Token expired: open this page again with a fresh ?token=<your token>.';
  } else {
    text = 'Token refused: open this page with a valid ?token=<your token>.';
  }
  setText(element('auth-text'), text);
  setText(element('auth-reason'), `Server: ${reason || 'no reason given'} (close code 4001)`);
  banner.hidden = false;
}

// -- task detail ------------------------------------------------------------------

// The task the dialog shows; `generation` drops a reply for one shown before.
const detailView = { taskId: null, generation: 0, loading: false, again: false };

function openDetail(taskId) {
  detailView.taskId = taskId;
  detailView.generation += 1;
  setText(element('detail-task-id'), taskId);
  element('detail-fields').replaceChildren();
  element('detail-timeline').replaceChildren();
  setText(element('detail-dropped'), '');
  showViewState(element('detail-state'), 'loading', 'Loading the record…');
  const dialog = element('detail');
  delete dialog.dataset.status;
  if (!dialog.open) dialog.showModal();
  loadDetail();
}

// One request at a time; events that arrive meanwhile ask for one more.
async function loadDetail() {
  if (detailView.loading) {
    detailView.again = true;
    return;
  }
  detailView.loading = true;
  const { taskId, generation } = detailView;
  let record = null;
  let problem = null;
  try {
    record = await client.getTask(taskId);
  } catch (error) {
    problem = error;
  }
  detailView.loading = false;
  if (generation === detailView.generation && detailView.taskId !== null) {
    drawDetail(record, problem);
  }
  if (detailView.again) {
    detailView.again = false;
    if (detailView.taskId !== null) loadDetail();
  }
}

function drawDetail(record, problem) {
  const state = element('detail-state');
  if (problem) {
    showViewState(state, 'error', `The record could not be loaded: ${problem.message}`);
    return;
  }
  if (!record) {
    showViewState(state, 'missing', 'No record of this task: unknown, past its retention, '
      + 'or not visible with this token.');
    return;
  }
  showViewState(state, 'loaded', '');
  element('detail').dataset.status = record.status ?? '';
  const fields = recordDetails(record, formatDateTime).flatMap(({ key, label, text }) => {
    const term = make('dt');
    term.textContent = label;
    const value = make('dd');
    value.dataset.field = key;
    value.textContent = text;
    return [term, value];
  });
  element('detail-fields').replaceChildren(...fields);
  const rows = timelineRows(record).map((entry) => {
    const row = make('li', 'step-row');
    row.dataset.kind = entry.kind;
    make('time', 'at', row).textContent = typeof entry.at === 'number'
      ? formatClock(entry.at * 1000) : '—';
    make('span', 'kind', row).textContent = entry.kind;
    make('span', 'offset', row).textContent = entry.offset === null ? ''
      : `+${formatRuntime(entry.offset)}`;
    return row;
  });
  element('detail-timeline').replaceChildren(...rows);
  setText(element('detail-dropped'), record.events_dropped
    ? `(the first ${record.events_dropped} events are no longer kept)` : '');
}

function showViewState(node, state, text) {
  node.dataset.state = state;
  setText(node, text);
}

function openFromRow(event) {
  if (event.type === 'keydown' && event.key !== 'Enter') return;
  const row = event.target.closest('li[data-task-id]');
  if (row) openDetail(row.dataset.taskId);
}

for (const id of ['running', 'waiting', 'notifications', 'failures']) {
  element(id).addEventListener('click', openFromRow);
  element(id).addEventListener('keydown', openFromRow);
}
element('detail-close').addEventListener('click', () => element('detail').close());
element('detail').addEventListener('close', () => {
  detailView.taskId = null;
  detailView.generation += 1;
});

// -- recent failures ----------------------------------------------------------------

const FAILURES_PAGE = 20;
const FILTER_DELAY_MS = 300;
// `generation` drops a page asked for before the filter changed.
const failures = { name: '', next: null, listed: new Set(), generation: 0, typing: 0 };

async function loadFailures({ more = false } = {}) {
  if (!more) failures.generation += 1;
  const { generation } = failures;
  const button = element('failures-more');
  button.disabled = true;
  showViewState(element('failures-state'), 'loading', 'Loading…');
  let page;
  try {
    page = await client.listTasks({
      status: 'failed', name: failures.name, limit: FAILURES_PAGE,
      cursor: more ? failures.next : null,
    });
  } catch (error) {
    if (generation !== failures.generation) return;
    showViewState(element('failures-state'), 'error',
      `Failures could not be loaded: ${error.message}`);
    button.disabled = false;
    return;
  }
  if (generation !== failures.generation) return;
  if (!more) {
    element('failures').replaceChildren();
    failures.listed.clear();
  }
  element('failures').append(...page.tasks.filter(unlisted).map(failureRow));
  failures.next = page.next;
  button.hidden = !page.next;
  button.disabled = false;
  showViewState(element('failures-state'), 'loaded', '');
}

// A task that failed while the page is open goes on top, if the filter lets it.
async function addFailure(taskId) {
  const { generation } = failures;
  let record;
  try {
    record = await client.getTask(taskId);
  } catch {
    return;
  }
  if (generation !== failures.generation || !record || record.status !== 'failed'
      || (failures.name && record.name !== failures.name) || !unlisted(record)) return;
  element('failures').prepend(failureRow(record));
}

function unlisted(record) {
  return !failures.listed.has(record.task_id);
}

function failureRow(record) {
  failures.listed.add(record.task_id);
  const root = make('li', 'failure');
  root.dataset.taskId = record.task_id;
  root.tabIndex = 0;
  make('time', 'at', root).textContent = typeof record.finished_at === 'number'
    ? formatDateTime(record.finished_at) : '';
  const name = make('span', 'name', root);
  make('span', 'avid', name).textContent = String(record.avid ?? '');
  make('span', 'task-name', name).textContent = record.name ?? '';
  make('span', 'message', root).textContent = record.message ?? '';
  return root;
}

const nameFilter = element('failures-name');

function filterFailures() {
  clearTimeout(failures.typing);
  const name = nameFilter.value.trim();
  if (name === failures.name) return;
  failures.name = name;
  loadFailures();
}

nameFilter.addEventListener('input', () => {
  clearTimeout(failures.typing);
  failures.typing = setTimeout(filterFailures, FILTER_DELAY_MS);
});
nameFilter.addEventListener('keydown', (event) => {
  if (event.key === 'Enter') filterFailures();
});
element('failures-more').addEventListener('click', () => loadFailures({ more: true }));

// -- per-minute chart -------------------------------------------------------------

const CHART_WIDTH = 600;
const CHART_HEIGHT = 120;
const CHART_MINUTES = 60;
// Finished tasks ask for new counts at most this often; the window slides every minute.
const CHART_DELAY_MS = 1000;
const CHART_INTERVAL_MS = 60000;
const SVG = 'http://www.w3.org/2000/svg';
let chartTimer = 0;

function svgElement(tag, attributes, parent) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (parent) parent.append(node);
  return node;
}

async function loadChart() {
  clearTimeout(chartTimer);
  chartTimer = 0;
  try {
    drawChart(await client.getMinuteCounts(CHART_MINUTES));
  } catch (error) {
    setText(element('chart-summary'), `The counts could not be loaded: ${error.message}`);
  }
}

function scheduleChart() {
  if (!chartTimer) chartTimer = setTimeout(loadChart, CHART_DELAY_MS);
}

function drawChart(minutes) {
  const chart = minuteChart(minutes, CHART_WIDTH, CHART_HEIGHT);
  const svg = element('minute-chart');
  svg.replaceChildren(...chart.bars.map((bar) => {
    const group = svgElement('g', {
      class: 'minute', 'data-minute': bar.minute, 'data-completed': bar.completed,
      'data-failed': bar.failed,
    });
    svgElement('title', {}, group).textContent = `${formatClock(bar.minute * 1000)}: `
      + `${bar.completed} completed, ${bar.failed} failed`;
    svgElement('rect', { class: 'completed', x: bar.x, y: bar.completedY, width: bar.width,
      height: bar.completedHeight }, group);
    svgElement('rect', { class: 'failed', x: bar.x, y: bar.failedY, width: bar.width,
      height: bar.failedHeight }, group);
    return group;
  }));
  svg.dataset.peak = String(chart.peak);
  setText(element('chart-summary'), `${chart.completed} completed, ${chart.failed} failed `
    + `in the last hour; busiest minute: ${chart.peak}`);
}

// -- wiring -------------------------------------------------------------------

const dirty = new Set();
let frame = 0;

function invalidate(parts) {
  for (const part of parts) dirty.add(part);
  if (dirty.size && !frame) frame = requestAnimationFrame(draw);
}

function draw() {
  frame = 0;
  if (dirty.has('running')) drawRunning();
  else if (dirty.has('clock')) tickElapsed();
  if (dirty.has('waiting')) drawWaiting();
  if (dirty.has('notifications')) drawNotifications();
  if (dirty.has('snapshot') || dirty.has('clock')) drawSnapshot();
  if (dirty.has('workers') || dirty.has('clock')) drawWorkers();
  if (dirty.has('queues')) drawQueues();
  dirty.clear();
}

client.on('state', (detail) => {
  drawConnection(detail);
  if (detail.state === 'open') {
    client.getQueueStatus().catch(() => {});
    loadFailures();
    loadChart();
  }
  if (detail.state === 'reconnecting' && detail.code === TOKEN_REFUSED) {
    drawTokenRefused(detail.reason);
    client.close();
  }
});
client.on('queue_status', (data) => invalidate(board.applyQueueStatus(data)));
client.on('resync', (data) => {
  invalidate(board.applyResync(data.reason));
  client.getQueueStatus().catch(() => {});
});
for (const type of ['task_received', 'task_started', 'task_progress', 'task_completed',
  'task_failed', 'task_retrying', 'task_revoked', 'task_rejected']) {
  client.on(type, (data) => {
    invalidate(board.applyTaskEvent(type, data));
    if (data.task_id === detailView.taskId) loadDetail();
    if (type === 'task_failed') addFailure(data.task_id);
    if (type === 'task_completed' || type === 'task_failed') scheduleChart();
  });
}
for (const type of ['worker_online', 'worker_offline']) {
  client.on(type, (data) => invalidate(board.applyWorkerEvent(type, data)));
}
setInterval(() => invalidate(['clock']), 1000);
setInterval(loadChart, CHART_INTERVAL_MS);
client.connect();
