// A strict consumer of notify-client's API, as an application would write it:
// compiled by tests/integration/test_client_types.py with `tsc --noEmit --strict`,
// never run. Every line is something the declarations must allow.

import {
  CloseCode,
  NotifyClient,
  restUrl,
  socketUrl,
  type ClientAction,
  type ErrorCode,
  type QueueStatusData,
  type ServerMessage,
  type StateDetail,
  type TaskRecord,
} from 'notify-client';

const client = new NotifyClient(undefined, {
  minDelay: 250,
  heartbeat: 0,
  getToken: async () => 'header.payload.signature',
});
const other = new NotifyClient(new URL(socketUrl('../ws/tasks/', 'https://example.com/app/static/')));
const rest: string = restUrl(other.url);

const off: () => void = client.on('task_progress', (data, message) => {
  const percent: number = data.percent;
  const current: number | null = data.current;
  const status: 'progress' = data.status;
  const id: string | undefined = message.id;
  console.log(percent, current, status, id, data.avid);
});
off();

client.on('task_completed', (data) => console.log(data.task_id, data.message.toUpperCase()));
client.on('task_failed', (data) => console.error(data.message));
client.on('worker_offline', (data) => {
  if (data.reason === 'heartbeats stopped') console.warn(data.worker, new Date(data.time * 1000));
});
client.on('queue_status', (data) => {
  for (const task of data.active_tasks) console.log(task.avid, task.time_start ?? 'unknown start');
  for (const task of data.scheduled_tasks) console.log(task.eta);
  for (const queue of data.queues) console.log(queue.name, queue.waiting ?? '?');
});
client.on('task', (record) => console.log(record.status, record.progress?.percent, record.last_id));
client.on('resync', ({ reason }) => console.warn(reason));
client.on('error', (data, message) => {
  if (data.code === 'token_unavailable') return;
  const code: ErrorCode = data.code;
  console.error(code, message?.data.message);
});
client.on('state', (detail: StateDetail) => {
  if (detail.state === 'reconnecting' && detail.code === CloseCode.UNAUTHORIZED) {
    console.log('new token needed', detail.reason, detail.delay);
  }
});
// A type a newer server may send: delivered, and nothing is assumed of it.
client.on('task_uploaded', (data: unknown, message) => console.log(message.type, data));

client.connect().send({ action: 'ping' });
const actions: ClientAction[] = [
  { action: 'get_queue_status' },
  { action: 'subscribe', avids: ['SSIS-950', 42] },
  { action: 'resume', last_event_id: '1703001234567-0' },
  { action: 'refresh', token: 'header.payload.signature' },
  { action: 'get_task', task_id: 't-1' },
];
actions.forEach((action) => client.send(action));

async function use(): Promise<void> {
  const status: QueueStatusData = await client.getQueueStatus();
  const records: TaskRecord[] = await client.subscribe({ task_ids: ['t-1'] });
  const record = await client.getTask('t-1');
  if (record !== null) console.log(record.events.map((entry) => entry.type), record.retries);
  const page = await client.listTasks({ status: 'failed', limit: 20, cursor: null });
  const next = page.next === null ? null : await client.listTasks({ cursor: page.next });
  const minutes = await client.getMinuteCounts(30);
  console.log(status.stale, records.length, next?.tasks.length, minutes[0]?.completed, rest);
  client.close();
}
void use();

// Narrowing on `type`, exhaustively: a type added to ServerMessage breaks this switch.
function describe(message: ServerMessage): string {
  switch (message.type) {
    case 'task_received': return `${message.data.task_id} at ${message.data.worker}`;
    case 'task_started': return `${message.data.avid} started`;
    case 'task_progress': return `${message.data.percent}%`;
    case 'task_completed': return message.data.message;
    case 'task_failed': return message.data.message;
    case 'task_retrying': return message.data.message;
    case 'task_revoked': return message.data.message;
    case 'task_rejected': return message.data.message;
    case 'worker_online': return message.data.worker;
    case 'worker_offline': return message.data.reason;
    case 'queue_status': return `${message.data.active_tasks.length} running`;
    case 'task': return message.data.status;
    case 'pong': return String(message.data.time);
    case 'error': return message.data.code;
    case 'resync': return message.data.reason;
    case 'refreshed': return String(message.data.exp);
    default: {
      const unknown: never = message;
      return unknown;
    }
  }
}
console.log(describe({ type: 'pong', data: { time: 1703001234.5 } }));

// What the declarations must refuse: each line below is an error tsc must report.
// @ts-expect-error a subscribe names task ids or subjects
client.send({ action: 'subscribe' });
// @ts-expect-error not an action of the protocol
client.send({ action: 'unsubscribe' });
// @ts-expect-error a seed key keeps its type
client.on('task_started', (data) => data.avid.toFixed());
// @ts-expect-error queue_status has no id
client.on('queue_status', (data, message) => message.id);
