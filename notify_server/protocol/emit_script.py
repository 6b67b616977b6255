"""The emit script: one atomic step that writes an event and its task's record.

Standard library only: the worker side runs it (`worker.emitter`), and so
may a third-party writer (`python -m notify_server.protocol.emit_script`
prints it). docs/protocol.md section 6 is its contract; the rules of the
record it keeps (what moves a status, what a retry resets) are section 6.5.

Calling it: ``EVALSHA sha 3 HISTORY CHANNEL ONCE_KEY EVENT MAXLEN WINDOW
PREFIX RECORD``. ``ONCE_KEY`` may be "" (no transition key); with
``PREFIX`` "" (or absent) no record is kept, as before records existed.
``RECORD`` is a JSON object of strings, named by `RECORD_FIELDS`
(one argument: cheaper to send than a pair each); `record_arguments`
builds it from an event.
"""

from typing import Any, List, Mapping, Optional

from notify_server.protocol.task_events import TASK_PROGRESS, encode_event

# What a record update may carry, by name; all but task_id and type optional.
RECORD_FIELDS = ("task_id", "type", "attempt", "time", "owner", "avid", "name", "worker",
                 "message", "progress", "runtime")

# Of a record: the lifecycle step each event type is, and its status word.
RANKS = {"task_received": 1, "task_started": 2, "task_progress": 3, "task_retrying": 4,
         "task_completed": 5, "task_failed": 5, "task_revoked": 5, "task_rejected": 5}
STATUS_OF = {"task_received": "received", "task_started": "started",
             "task_progress": "progress", "task_retrying": "retrying",
             "task_completed": "success", "task_failed": "failed",
             "task_revoked": "revoked", "task_rejected": "rejected"}
STATUSES = tuple(STATUS_OF.values())

# Defaults the script uses while no server has written PREFIX:tasks:config.
DEFAULT_RETENTION = 7 * 86400
DEFAULT_FAILED_RETENTION = 30 * 86400
DEFAULT_MAX_RECORDS = 100000
DEFAULT_TIMELINE = 50
# A record's hash outlives its retention by this much: the server's sweep
# removes it (and its index entries) first; the expiry is for when no server runs.
EXPIRY_MARGIN = 86400
# Per-minute counters are kept this long.
MINUTE_COUNTERS_TTL = 7200

_LUA_TABLE = ", ".join(f"{kind}={rank}" for kind, rank in RANKS.items())
_LUA_STATUS = ", ".join(f"{kind}='{status}'" for kind, status in STATUS_OF.items())

EMIT_SCRIPT = """
local RANK = {%(ranks)s}
local STATUS = {%(status)s}

local function fields()
    local ok, given = pcall(cjson.decode, ARGV[5] or '')
    if not ok or type(given) ~= 'table' then return nil end
    local f = {}
    for name, value in pairs(given) do
        if type(value) == 'string' then f[name] = value end
    end
    if not RANK[f.type] or not f.task_id or f.task_id == '' then return nil end
    return f
end

-- The record so far, read once per event (by `with_meta`, then `record`).
local function current(p, f)
    return redis.call('HMGET', p .. 'task:' .. f.task_id, 'sort', 'status', 'rank', 'attempt',
                      'owner', 'tl_n', 'tl_dropped', 'received_at', 'started_at', 'name', 'worker')
end

-- The event with a top-level "meta": the task's name, worker and, as it ends, its
-- runtime, from RECORD or else the record so far `cur` (the servers' metrics read it).
local function with_meta(f, cur)
    local event = ARGV[1]
    if string.sub(event, -1) ~= '}' then return event end
    local m = {}
    if f.name and f.name ~= '' then m.name = f.name elseif cur[10] then m.name = cur[10] end
    if f.worker and f.worker ~= '' then m.worker = f.worker
    elseif cur[11] then m.worker = cur[11] end
    if RANK[f.type] == 5 then
        local runtime = tonumber(f.runtime)
        local attempt = tonumber(f.attempt) or tonumber(cur[4])
        if not runtime and cur[9] and tonumber(f.time) and attempt == tonumber(cur[4])
                and (tonumber(cur[3]) or 0) < 5 then
            runtime = math.max(0, tonumber(f.time) - tonumber(cur[9]))
        end
        if runtime then m.runtime = runtime end
    end
    if next(m) == nil then return event end
    return string.sub(event, 1, -2) .. ',"meta":' .. cjson.encode(m) .. '}'
end

local function record(p, id, f, cur)
    local rank = RANK[f.type]
    local key = p .. 'task:' .. f.task_id
    local conf = redis.call('HMGET', p .. 'tasks:config', 'retention', 'failed_retention',
                            'max', 'timeline')
    local ms, seq = string.match(id, '^(%%d+)-(%%d+)$')
    local at = tonumber(f.time) or tonumber(ms) / 1000
    local stamp = string.format('%%.6f', at)
    local sort, status, owner = cur[1], cur[2], cur[5]
    local set = {'last_id', id}
    local function put(name, value) set[#set + 1] = name; set[#set + 1] = value end
    local created = not sort
    if created then
        sort = string.format('%%013d-%%06d ', tonumber(ms), tonumber(seq)) .. f.task_id
        put('sort', sort)
        redis.call('ZADD', p .. 'tasks:all', 0, sort)
    end
    local keep = tonumber(conf[2]) or %(failed_retention)d
    if not owner and f.owner then
        owner = f.owner
        put('owner', owner)
        redis.call('ZADD', p .. 'tasks:owner:' .. owner, 0, sort)
        redis.call('EXPIRE', p .. 'tasks:owner:' .. owner, math.ceil(keep) + %(margin)d)
        if status then
            redis.call('ZADD', p .. 'tasks:status:' .. status .. ':owner:' .. owner, 0, sort)
        end
    end
    if f.avid and (created or f.avid ~= 'null') then put('avid', f.avid) end
    if f.name and f.name ~= '' then put('name', f.name) end
    if f.worker and f.worker ~= '' then put('worker', f.worker) end
    if rank == 1 and not cur[8] then put('received_at', stamp) end
    local cur_attempt = tonumber(cur[4])
    local attempt = tonumber(f.attempt) or cur_attempt or 0
    local cur_rank = tonumber(cur[3]) or 0
    local apply = false
    if cur_attempt == nil or attempt > cur_attempt then
        apply = true
        if cur_attempt ~= nil then
            redis.call('HDEL', key, 'started_at', 'finished_at', 'runtime', 'message', 'progress')
            cur[9] = false
        end
    elseif attempt == cur_attempt and cur_rank < 5 then
        apply = rank > cur_rank or (rank == 3 and cur_rank == 3)
    end
    local new_status = status
    if apply then
        new_status = STATUS[f.type]
        put('status', new_status); put('rank', rank); put('attempt', attempt)
        if rank == 2 then put('started_at', stamp) end
        if rank == 3 and f.progress then put('progress', f.progress) end
        if rank >= 4 and f.message then put('message', f.message) end
        if rank == 5 then
            put('finished_at', stamp)
            local runtime = tonumber(f.runtime)
            if not runtime and cur[9] then runtime = math.max(0, tonumber(stamp) - tonumber(cur[9])) end
            if runtime then put('runtime', string.format('%%.6f', runtime)) end
            if new_status == 'success' or new_status == 'failed' then
                local counted = new_status == 'success' and 'completed' or 'failed'
                local minute = p .. 'tasks:minute:' .. math.floor(at / 60)
                redis.call('HINCRBY', minute, counted, 1)
                if owner then redis.call('HINCRBY', minute, counted .. ':' .. owner, 1) end
                redis.call('EXPIRE', minute, %(minute_ttl)d)
            end
        end
        if new_status ~= status then
            if status then
                redis.call('ZREM', p .. 'tasks:status:' .. status, sort)
                if owner then
                    redis.call('ZREM', p .. 'tasks:status:' .. status .. ':owner:' .. owner, sort)
                end
            end
            redis.call('ZADD', p .. 'tasks:status:' .. new_status, 0, sort)
            if owner then
                local index = p .. 'tasks:status:' .. new_status .. ':owner:' .. owner
                redis.call('ZADD', index, 0, sort)
                redis.call('EXPIRE', index, math.ceil(keep) + %(margin)d)
            end
        end
    end
    -- The timeline is a string of its own (APPEND, no read back): the hash
    -- keeps short values only, which Redis stores compactly (a listpack).
    local tlkey = p .. 'task-events:' .. f.task_id
    redis.call('APPEND', tlkey, f.type .. ' ' .. stamp .. ' ' .. id .. '\\n')
    local n = (tonumber(cur[6]) or 0) + 1
    if n > (tonumber(conf[4]) or %(timeline)d) then
        local tl = redis.call('GET', tlkey)
        redis.call('SET', tlkey, string.sub(tl, string.find(tl, '\\n', 1, true) + 1), 'KEEPTTL')
        n = n - 1
        put('tl_dropped', (tonumber(cur[7]) or 0) + 1)
    end
    put('tl_n', n)
    redis.call('HSET', key, unpack(set))
    if created or (apply and rank == 5) then
        local ttl = math.ceil(new_status == 'failed' and keep or (tonumber(conf[1]) or %(retention)d))
        redis.call('EXPIRE', key, ttl + %(margin)d)
        redis.call('EXPIRE', tlkey, ttl + %(margin)d)
    end
    if apply and rank == 5 then
        -- APPEND leaves room to grow; a finished task's timeline is copied to its size.
        redis.call('SET', tlkey, redis.call('GET', tlkey), 'KEEPTTL')
    end
    if created then
        local max = tonumber(conf[3]) or %(max_records)d
        for _ = 1, 2 do
            if redis.call('ZCARD', p .. 'tasks:all') <= max then break end
            local victim = false
            for _, group in ipairs({{'success', 'revoked', 'rejected'}, {'failed'}}) do
                for _, s in ipairs(group) do
                    local head = redis.call('ZRANGE', p .. 'tasks:status:' .. s, 0, 0)[1]
                    if head and (not victim or head < victim) then victim = head end
                end
                if victim then break end
            end
            victim = victim or redis.call('ZRANGE', p .. 'tasks:all', 0, 0)[1]
            if not victim or victim == sort then break end
            local vkey = p .. 'task:' .. string.sub(victim, 22)
            local v = redis.call('HMGET', vkey, 'status', 'owner')
            redis.call('DEL', vkey, p .. 'task-events:' .. string.sub(victim, 22))
            redis.call('ZREM', p .. 'tasks:all', victim)
            if v[1] then
                redis.call('ZREM', p .. 'tasks:status:' .. v[1], victim)
                if v[2] then
                    redis.call('ZREM', p .. 'tasks:status:' .. v[1] .. ':owner:' .. v[2], victim)
                end
            end
            if v[2] then redis.call('ZREM', p .. 'tasks:owner:' .. v[2], victim) end
        end
    end
end

local once = KEYS[3]
if once and once ~= '' and not redis.call('SET', once, '1', 'NX', 'EX', ARGV[3]) then
    return false
end
local p = ARGV[4] or ''
local f = p ~= '' and fields() or nil
local cur = f and current(p, f)
local event = f and with_meta(f, cur) or ARGV[1]
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', event)
redis.call('PUBLISH', KEYS[2], '{"id":"' .. id .. '",' .. string.sub(event, 2))
if f then record(p, id, f, cur) end
return id
""" % {"ranks": _LUA_TABLE, "status": _LUA_STATUS, "retention": DEFAULT_RETENTION,
       "failed_retention": DEFAULT_FAILED_RETENTION, "max_records": DEFAULT_MAX_RECORDS,
       "timeline": DEFAULT_TIMELINE, "margin": EXPIRY_MARGIN,
       "minute_ttl": MINUTE_COUNTERS_TTL}

# The sort key's width before the task id: "<13-digit ms>-<6-digit seq> ".
SORT_PREFIX_LENGTH = 21


def record_arguments(message: Mapping[str, Any], extra: Optional[Mapping[str, Any]] = None,
                     ) -> List[str]:
    """The script's RECORD argument for `message` (an event ``{"type",
    "data", "owner"?}``), with `extra`'s ``attempt``, ``time``, ``name``,
    ``worker`` and ``runtime`` where known, as a one-item list; [] for an
    event that is not a task's lifecycle step (worker events, unknown types)."""
    kind = message.get("type")
    data = message.get("data")
    if kind not in RANKS or not isinstance(data, dict):
        return []
    task_id = data.get("task_id")
    if not isinstance(task_id, str) or not task_id:
        return []
    fields = {"task_id": task_id, "type": kind, "avid": encode_event(data.get("avid")).decode()}
    owner = message.get("owner")
    if isinstance(owner, str):
        fields["owner"] = owner
    if kind == TASK_PROGRESS:
        progress = {key: data.get(key) for key in ("current", "total", "percent", "message")}
        fields["progress"] = encode_event(progress).decode()
    elif isinstance(data.get("message"), str):
        fields["message"] = data["message"]
    for name, value in (extra or {}).items():
        if value is None or value == "":
            continue
        if name == "attempt" and isinstance(value, int) and not isinstance(value, bool):
            fields["attempt"] = str(value)
        elif name in ("time", "runtime") and isinstance(value, (int, float)) \
                and not isinstance(value, bool):
            fields[name] = repr(float(value))
        elif name in ("name", "worker") and isinstance(value, str):
            fields[name] = value[:200]
    return [encode_event(fields)]


if __name__ == "__main__":
    print(EMIT_SCRIPT.strip())
