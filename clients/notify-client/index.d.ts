/**
 * Types of notify-client.js and of the whole wire protocol it speaks
 * (docs/protocol.md of notify-server): every server message with its `data`,
 * every client action, error code and close code.
 *
 * The shapes are exact: tests/integration/test_client_types.py compiles
 * messages captured from a running server against them (`tsc --noEmit
 * --strict`), and checks every name list below against the server's code, so
 * a key the server sends that is missing here, or one declared here that it
 * does not send, fails that test.
 *
 * The protocol is additive (docs/protocol.md section 1): a newer server may
 * send a type or a key this file does not know. `NotifyClient.on` delivers
 * any type all the same; these types describe the server of this repository.
 */

// -- values ---------------------------------------------------------------------

/** A task's subject (`avid`): a JSON scalar or null (docs/protocol.md section 1). */
export type Subject = string | number | boolean | null;

/** A Redis stream id such as `"1703001234567-0"`; compare as two numbers, not as strings. */
export type StreamId = `${number}-${number}`;

/** Unix epoch seconds. */
export type EpochSeconds = number;

// -- task and worker events (section 2.2) ------------------------------------------

export interface TaskStartedData {
  task_id: string;
  avid: Subject;
  status: 'started';
}

export interface TaskCompletedData {
  task_id: string;
  avid: Subject;
  status: 'success';
  /** The return value as text, at most 1,000 characters; `"success"` for None. */
  message: string;
}

export interface TaskFailedData {
  task_id: string;
  avid: Subject;
  status: 'failed';
  /** The reason: `"ExceptionType: text"`. */
  message: string;
}

export interface TaskProgressData {
  task_id: string;
  avid: Subject;
  status: 'progress';
  /** As the task reported it; null for a non-finite number. */
  current: number | null;
  total: number | null;
  /** `100 * current / total`, one decimal; 0 when `total` is 0. */
  percent: number;
  message: string;
}

export interface TaskRetryingData {
  task_id: string;
  avid: Subject;
  status: 'retrying';
  message: string;
}

export interface TaskRevokedData {
  task_id: string;
  avid: Subject;
  status: 'revoked';
  /** `"revoked"`, `"terminated by signal N"` or `"expired before it ran"`. */
  message: string;
}

/** From the Celery event bridge only (section 8). */
export interface TaskReceivedData {
  task_id: string;
  avid: Subject;
  status: 'received';
  /** The worker that took the task. */
  worker: string;
}

/** From the Celery event bridge only (section 8). */
export interface TaskRejectedData {
  task_id: string;
  avid: Subject;
  status: 'rejected';
  /** `"requeued"` or `"rejected"`. */
  message: string;
}

export interface WorkerOnlineData {
  /** The worker's hostname, e.g. `"celery@host"`. */
  worker: string;
  time: EpochSeconds;
}

export interface WorkerOfflineData {
  worker: string;
  time: EpochSeconds;
  reason: 'shutdown' | 'heartbeats stopped';
}

/**
 * An event: `id` is its stream id, the resume point, when it was written to
 * the history (an event published without one has none).
 */
export interface EventMessage<T extends string, D> {
  type: T;
  data: D;
  id?: StreamId;
}

export type TaskStartedMessage = EventMessage<'task_started', TaskStartedData>;
export type TaskCompletedMessage = EventMessage<'task_completed', TaskCompletedData>;
export type TaskFailedMessage = EventMessage<'task_failed', TaskFailedData>;
export type TaskProgressMessage = EventMessage<'task_progress', TaskProgressData>;
export type TaskRetryingMessage = EventMessage<'task_retrying', TaskRetryingData>;
export type TaskRevokedMessage = EventMessage<'task_revoked', TaskRevokedData>;
export type TaskReceivedMessage = EventMessage<'task_received', TaskReceivedData>;
export type TaskRejectedMessage = EventMessage<'task_rejected', TaskRejectedData>;
export type WorkerOnlineMessage = EventMessage<'worker_online', WorkerOnlineData>;
export type WorkerOfflineMessage = EventMessage<'worker_offline', WorkerOfflineData>;

/** The lifecycle events of a task: each moves its record (section 6.5). */
export type TaskEvent =
  | TaskReceivedMessage
  | TaskStartedMessage
  | TaskProgressMessage
  | TaskRetryingMessage
  | TaskCompletedMessage
  | TaskFailedMessage
  | TaskRevokedMessage
  | TaskRejectedMessage;

/** Events about a worker: every client gets them, whatever its token or subscription. */
export type WorkerEvent = WorkerOnlineMessage | WorkerOfflineMessage;

export type TaskEventType = TaskEvent['type'];
export type WorkerEventType = WorkerEvent['type'];

/** A task event's `status` word, and a record's `status`. */
export type TaskStatus = TaskEvent['data']['status'];

// -- queue_status (section 2.2) -------------------------------------------------------

export interface ActiveTask {
  task_id: string;
  avid: Subject;
  worker: string;
  /** Null when Celery gave none. */
  time_start: EpochSeconds | null;
}

export interface ScheduledTask {
  task_id: string;
  avid: Subject;
  worker: string;
  /** ISO 8601 with offset, as Celery reports it; null when it has none. */
  eta: string | null;
}

export interface ReservedTask {
  task_id: string;
  avid: Subject;
  worker: string;
}

export interface WorkerState {
  name: string;
  online: boolean;
  last_heartbeat: EpochSeconds | null;
}

export interface QueueDepth {
  name: string;
  /** Messages in the broker no worker has taken yet; null when not known. */
  waiting: number | null;
}

export interface QueueStatusData {
  /** Oldest `time_start` first. */
  active_tasks: ActiveTask[];
  scheduled_tasks: ScheduledTask[];
  reserved_tasks: ReservedTask[];
  /** The workers that answered the last successful poll, sorted. */
  workers: string[];
  /** Every worker known, sorted by name. */
  worker_states: WorkerState[];
  /** Sorted by name. */
  queues: QueueDepth[];
  /** The last successful poll; null before the first. */
  updated_at: EpochSeconds | null;
  /** True when the last poll failed (the lists are the last good ones), and before the first. */
  stale: boolean;
}

/** A snapshot, not an event: no `id`, never replayed; the latest replaces every earlier one. */
export interface QueueStatusMessage {
  type: 'queue_status';
  data: QueueStatusData;
}

// -- task records (sections 2.2 and 5.5) ----------------------------------------------

export interface TaskProgress {
  current: number | null;
  total: number | null;
  percent: number;
  message: string;
}

export interface TimelineEntry {
  type: TaskEventType;
  time: EpochSeconds;
  id: StreamId;
}

/** What the server knows of one task: the `task` message's data and `GET /api/tasks/<id>`. */
export interface TaskRecord {
  task_id: string;
  avid: Subject;
  /** The Celery task name; null until an event that knows it. */
  name: string | null;
  status: TaskStatus;
  worker: string | null;
  received_at: EpochSeconds | null;
  started_at: EpochSeconds | null;
  finished_at: EpochSeconds | null;
  runtime: number | null;
  /** Of the latest `retrying` or final step: the result text or the failure reason. */
  message: string | null;
  /** The last `task_progress` of the current attempt. */
  progress: TaskProgress | null;
  /** The current attempt: Celery's `retries`, 0 on the first run. */
  retries: number;
  /** Oldest first, at most 50. */
  events: TimelineEntry[];
  events_dropped: number;
  /** The newest event this record reflects: apply only events with a greater `id`. */
  last_id: StreamId;
}

/** A reply to `get_task`, or sent after `subscribe` with `task_ids`; no `id`. */
export interface TaskRecordMessage {
  type: 'task';
  data: TaskRecord;
}

// -- pong, error, resync, refreshed (section 2.2) ---------------------------------------

export interface PongMessage {
  type: 'pong';
  data: { time: EpochSeconds };
}

/** Every `code` of an `error` (section 2.5); new ones may be added. */
export type ErrorCode =
  | 'invalid_json'
  | 'not_an_object'
  | 'binary_not_supported'
  | 'missing_action'
  | 'unknown_action'
  | 'resume_in_progress'
  | 'invalid_argument'
  | 'rate_limited'
  | 'invalid_token'
  | 'auth_disabled'
  | 'not_found'
  | 'unavailable';

export interface ErrorData {
  /** Stable, for programs. */
  code: ErrorCode;
  /** For people; the wording may change. */
  message: string;
}

export interface ErrorMessage {
  type: 'error';
  data: ErrorData;
}

/** Events asked for are gone from the history: drop the task state and rebuild it. */
export interface ResyncMessage {
  type: 'resync';
  data: { reason: string };
}

/** The reply to `refresh` (token mode): the new token's expiry. */
export interface RefreshedMessage {
  type: 'refreshed';
  data: { exp: EpochSeconds };
}

/** Every message the server sends: narrow on `type`. */
export type ServerMessage =
  | TaskEvent
  | WorkerEvent
  | QueueStatusMessage
  | TaskRecordMessage
  | PongMessage
  | ErrorMessage
  | ResyncMessage
  | RefreshedMessage;

export type ServerMessageType = ServerMessage['type'];

/** The message of one `type`: `MessageOfType<'task_progress'>`. */
export type MessageOfType<T extends ServerMessageType> = Extract<ServerMessage, { type: T }>;

// -- client actions (section 2.3) --------------------------------------------------------

export interface GetQueueStatusAction {
  action: 'get_queue_status';
}

export interface PingAction {
  action: 'ping';
}

/** Task ids and subjects compare as JSON values: `"42"` is not `42`. */
export type SubscribeFilter =
  | { task_ids: Array<string | number>; avids?: Array<string | number> }
  | { task_ids?: Array<string | number>; avids: Array<string | number> };

export type SubscribeAction = { action: 'subscribe' } & SubscribeFilter;

export interface ResumeAction {
  action: 'resume';
  last_event_id: string;
}

export interface RefreshAction {
  action: 'refresh';
  token: string;
}

export interface GetTaskAction {
  action: 'get_task';
  task_id: string;
}

export type ClientAction =
  | GetQueueStatusAction
  | PingAction
  | SubscribeAction
  | ResumeAction
  | RefreshAction
  | GetTaskAction;

export type ActionName = ClientAction['action'];

// -- close codes (section 2.6) -----------------------------------------------------------

/**
 * The codes the server closes a socket with. The client itself closes with
 * 1000 (`close()`) and 4000 (`no reply to ping`); a browser reports 1006 for
 * a connection lost without a close frame.
 */
export declare const CloseCode: {
  /** `server shutting down` or `ping timeout`: reconnect and resume. */
  readonly GOING_AWAY: 1001;
  /** `rate limit exceeded`: reconnect later, send fewer actions. */
  readonly POLICY: 1008;
  /** `message too big`: do not send that frame again. */
  readonly TOO_BIG: 1009;
  /** `internal error; reconnect and resume`. */
  readonly INTERNAL_ERROR: 1011;
  /** `token required`, `token expired`, `invalid token: ...`: get a new token first. */
  readonly UNAUTHORIZED: 4001;
  /** `slow client: outgoing buffer full`: reconnect with backoff and resume. */
  readonly SLOW: 4008;
};
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

// -- REST answers (section 5.5) ------------------------------------------------------------

/** `GET /api/tasks`: one page, newest first; pass `next` as `cursor` for the next. */
export interface TaskPage {
  tasks: TaskRecord[];
  next: string | null;
}

export interface MinuteCount {
  /** The minute's start, Unix seconds. */
  minute: EpochSeconds;
  completed: number;
  failed: number;
}

/** The query parameters of `GET /api/tasks`; null, undefined and '' are left out. */
export interface TaskListFilters {
  status?: TaskStatus | null;
  name?: string | null;
  worker?: string | null;
  q?: string | null;
  since?: EpochSeconds | null;
  until?: EpochSeconds | null;
  limit?: number | null;
  cursor?: string | null;
}

/** How a REST call rejects: `status` is the HTTP status, 0 when there was no answer. */
export interface RestError extends Error {
  status: number;
}

// -- the client ---------------------------------------------------------------------------

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/** What `on('state', fn)` gets on every connection change. */
export type StateDetail =
  | { state: 'connecting'; attempt: number }
  | { state: 'open' }
  | {
      state: 'reconnecting';
      attempt: number;
      /** Ms until the next connect. */
      delay: number;
      /** The close that caused it (a `CloseCode`, 1006, 4000, ...); null when no token came. */
      code: number | null;
      reason: string;
    }
  | { state: 'closed' };

/** The `error` the client emits itself when `getToken` rejects (no message of the server). */
export interface TokenUnavailable {
  code: 'token_unavailable';
  message: string;
}

export interface NotifyClientOptions {
  /** Resume after this event id on the first connect. */
  lastEventId?: string;
  /** Ms; the first reconnect waits up to this long (500). */
  minDelay?: number;
  /** Ms; no reconnect waits longer (15000). */
  maxDelay?: number;
  /** Ms of silence before a `ping`; 0 disables (30000). */
  heartbeat?: number;
  /** Token mode: resolves to the JWT for the next connect or refresh. */
  getToken?: () => Promise<string>;
}

export declare class NotifyClient {
  /**
   * @param url the socket URL; by default `ws/tasks/` of the server this
   *   module was loaded from (path prefix kept).
   */
  constructor(url?: string | URL, options?: NotifyClientOptions);

  /** The socket URL, without `last_event_id` and `token`. */
  readonly url: string;
  minDelay: number;
  maxDelay: number;
  heartbeat: number;

  get state(): ConnectionState;
  /** The id of the last event received (sent as `last_event_id` on reconnect), or null. */
  get lastEventId(): string | null;

  /** Connection changes. Returns a function that removes `fn`. */
  on(type: 'state', fn: (detail: StateDetail) => void): () => void;
  /** The server's `error` replies, and the client's own `token_unavailable` (no message then). */
  on(type: 'error', fn: (data: ErrorData | TokenUnavailable, message: ErrorMessage | undefined) => void): () => void;
  /** `fn(data, message)` for every message of `type`. Returns a function that removes `fn`. */
  on<T extends ServerMessageType>(type: T, fn: (data: MessageOfType<T>['data'], message: MessageOfType<T>) => void): () => void;
  /** A type this version does not declare (a newer server's): delivered all the same. */
  on(type: string, fn: (data: unknown, message: { type: string; data: unknown; id?: string }) => void): () => void;

  /** Open the socket (if none is open or opening). */
  connect(): this;
  /** Send one action; false (and nothing sent) while the socket is not open. */
  send(action: ClientAction): boolean;
  /** The next `queue_status` data (asked for now, or on open); rejected by `close()`. */
  getQueueStatus(): Promise<QueueStatusData>;
  /**
   * Receive only the events of these tasks or subjects, also after every
   * reconnect; resolves with the records the server sends for `task_ids`.
   */
  subscribe(filter: SubscribeFilter): Promise<TaskRecord[]>;
  /** `GET /api/tasks/<id>`: the record, or null when it has none. */
  getTask(taskId: string): Promise<TaskRecord | null>;
  /** `GET /api/tasks`: one page of records, newest first. */
  listTasks(filters?: TaskListFilters): Promise<TaskPage>;
  /** `GET /api/tasks/stats/minutes`: oldest first. */
  getMinuteCounts(minutes?: number): Promise<MinuteCount[]>;
  /** Close for good (code 1000); pending `getQueueStatus()` and `subscribe()` promises reject. */
  close(): void;
}

// -- helpers the module exports ---------------------------------------------------------------

/** The ws:// or wss:// URL of `path` resolved against `base` (an http(s) or ws(s) URL). */
export declare function socketUrl(path: string, base: string | URL): string;
/** Full-jitter backoff: a random delay in [0, min(maxDelay, minDelay * 2^attempt)] ms. */
export declare function reconnectDelay(attempt: number, minDelay: number, maxDelay: number,
                                       random?: () => number): number;
/** The `exp` claim of a JWT, read without verifying it; null if it has none. */
export declare function tokenExpiry(token: string): number | null;
/** The REST URL of the task records (ending in `api/tasks/`) of a socket URL's server. */
export declare function restUrl(socket: string | URL): string;
/** Ms from `now` (epoch ms) until a token expiring at `exp` (epoch s) is refreshed. */
export declare function refreshDelay(exp: number, now?: number): number;
