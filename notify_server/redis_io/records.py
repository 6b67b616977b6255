"""Task records in Redis: read one or many, list a page, count per minute, sweep.

An adapter (redis.asyncio). Workers write records with their events (the
emit script, `protocol.emit_script`); the server only reads them, hands the
script its retention and bounds (`configure`), and, in the lease holder,
removes records past their retention (`sweep`). Every call may raise
RedisError or OSError; the handlers turn that into 503 or `unavailable`.
"""

import asyncio
import logging
import math
import time
from typing import Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from notify_server.access.auth import Scope
from notify_server.config import RecordsConfig
from notify_server.protocol.emit_script import STATUSES
from notify_server.protocol.names import Keys
from notify_server.records.query import SCAN_BUDGET, TaskQuery, encode_cursor
from notify_server.records.record import owner_of, render, text_fields

# KEYS: the indexes to merge (one, or one per owner of a scope). ARGV: the
# upper and lower BYLEX bounds, the page size, the scan budget, the key
# root ("PREFIX:"), then the filters name, worker and q ("" for none).
# Returns {next sort key or "", then per record: sort key, hash fields, timeline}.
# Index entries whose record is gone are removed as they are met.
LIST_SCRIPT = """
local upper, lower = ARGV[1], ARGV[2]
local limit, budget = tonumber(ARGV[3]), tonumber(ARGV[4])
local root, name, worker, q = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local seen, full = {}, false
for i = 1, #KEYS do
    local part = redis.call('ZRANGE', KEYS[i], upper, lower, 'BYLEX', 'REV', 'LIMIT', 0, budget)
    if #part == budget then full = true end
    for _, member in ipairs(part) do seen[#seen + 1] = {member, KEYS[i]} end
end
if #KEYS > 1 then table.sort(seen, function(a, b) return a[1] > b[1] end) end
local out, found, last = {''}, 0, nil
local function subject(avid)
    local ok, value = pcall(cjson.decode, avid or 'null')
    if ok and (type(value) == 'string' or type(value) == 'number') then return tostring(value) end
    return nil
end
for i = 1, math.min(#seen, budget) do
    local member, index = seen[i][1], seen[i][2]
    last = member
    local task_id = string.sub(member, 22)
    local h = redis.call('HGETALL', root .. 'task:' .. task_id)
    if #h == 0 then
        redis.call('ZREM', index, member)
    else
        local r = {}
        for j = 1, #h, 2 do r[h[j]] = h[j + 1] end
        local ok = (name == '' or r.name == name) and (worker == '' or r.worker == worker)
        if ok and q ~= '' then
            local s = subject(r.avid)
            ok = string.sub(task_id, 1, #q) == q or (s ~= nil and string.sub(s, 1, #q) == q)
        end
        if ok then
            found = found + 1
            out[#out + 1] = member
            out[#out + 1] = h
            out[#out + 1] = redis.call('GET', root .. 'task-events:' .. task_id) or ''
            if found == limit then
                out[1] = (i < #seen or full) and member or ''
                return out
            end
        end
    end
end
if (full or #seen > budget) and last then out[1] = last end
return out
"""

# ARGV: the key root, now in ms, the most to remove. Removes every record
# first written longer ago than its retention (the failed ones' for failed
# records), oldest first, with its index entries. Returns how many went.
SWEEP_SCRIPT = """
local p, now, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local conf = redis.call('HMGET', p .. 'tasks:config', 'retention', 'failed_retention')
local removed = 0
local function drop(member)
    local key = p .. 'task:' .. string.sub(member, 22)
    local v = redis.call('HMGET', key, 'status', 'owner')
    redis.call('DEL', key, p .. 'task-events:' .. string.sub(member, 22))
    redis.call('ZREM', p .. 'tasks:all', member)
    for _, s in ipairs({%(statuses)s}) do redis.call('ZREM', p .. 'tasks:status:' .. s, member) end
    if v[2] then
        redis.call('ZREM', p .. 'tasks:owner:' .. v[2], member)
        if v[1] then redis.call('ZREM', p .. 'tasks:status:' .. v[1] .. ':owner:' .. v[2], member) end
    end
    removed = removed + 1
end
for _, s in ipairs({%(statuses)s}) do
    local keep = tonumber(s == 'failed' and conf[2] or conf[1]) or %(default)d
    local cutoff = string.format('(%%013d', now - keep * 1000)
    for _, member in ipairs(redis.call('ZRANGE', p .. 'tasks:status:' .. s, '-', cutoff,
                                       'BYLEX', 'LIMIT', 0, most - removed)) do
        drop(member)
    end
    if removed >= most then return removed end
end
local longest = math.max(tonumber(conf[1]) or 0, tonumber(conf[2]) or 0, %(default)d)
for _, member in ipairs(redis.call('ZRANGE', p .. 'tasks:all', '-',
        string.format('(%%013d', now - longest * 1000), 'BYLEX', 'LIMIT', 0, most - removed)) do
    drop(member)
end
return removed
""" % {"statuses": ", ".join(f"'{s}'" for s in STATUSES), "default": 30 * 86400}

SWEEP_BATCH = 500
# How often every process writes the bounds, and the lease holder sweeps;
# how often it looks whether it holds the lease.
KEEP_INTERVAL = 60.0
KEEP_TURN = 5.0

log = logging.getLogger(__name__)

Page = Tuple[List[Tuple[Optional[str], dict]], Optional[str]]


class TaskRecords:
    """Reads the records under one prefix's keys (`Keys`)."""

    def __init__(self, redis: Redis, keys: Keys, config: RecordsConfig):
        self._redis, self._keys, self._config = redis, keys, config
        self._list = redis.register_script(LIST_SCRIPT)
        self._sweep = redis.register_script(SWEEP_SCRIPT)

    async def configure(self) -> None:
        """Hand the emit script this server's retention and bounds."""
        config = self._config
        await self._redis.hset(self._keys.records_config, mapping={
            "retention": repr(float(config.retention)),
            "failed_retention": repr(float(config.failed_retention)),
            "max": config.max_records, "timeline": config.timeline})

    async def get(self, task_id: str) -> Optional[Tuple[Optional[str], dict]]:
        """(owner, record) of one task, or None when there is none."""
        return (await self.get_many([task_id])).get(task_id)

    async def find(self, task_id: str, scope: Scope) -> Optional[dict]:
        """The record of one task if `scope` sees it, else None: a task of
        another owner is answered exactly as one that does not exist."""
        found = await self.get(task_id)
        return found[1] if found is not None and scope.sees(found[0]) else None

    async def keep(self, leading: Callable[[], bool]) -> None:
        """Forever: hand the emit script the bounds now and every
        `KEEP_INTERVAL`; while `leading()`, sweep old records as well, the
        first time within `KEEP_TURN` of taking the lease. A Redis outage is
        logged once and tried again at the next turn."""
        failing = False
        configured = swept = -math.inf
        while True:
            now = time.monotonic()
            try:
                if now - configured >= KEEP_INTERVAL:
                    await self.configure()
                    configured = now
                if not leading():
                    swept = -math.inf  # lead again later: sweep at once
                elif now - swept >= KEEP_INTERVAL:
                    removed = await self.sweep()
                    swept = now
                    if removed:
                        log.info("task records: %d past their retention removed", removed)
                if failing:
                    log.info("task records: bounds written and swept again")
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("task records: cannot write bounds or sweep (%s); trying again "
                                "every %.0f s", exc, KEEP_TURN)
                failing = True
            await asyncio.sleep(KEEP_TURN)

    async def get_many(self, task_ids: Iterable[str]) -> Dict[str, Tuple[Optional[str], dict]]:
        """(owner, record) of each task that has one, by task id: one round trip."""
        task_ids = list(task_ids)
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self._keys.record(task_id))
                pipe.get(self._keys.record_events(task_id))
            replies = await pipe.execute()
        found = {}
        for task_id, raw, timeline in zip(task_ids, replies[0::2], replies[1::2]):
            one = _one(raw, timeline)
            if one is not None:
                found[task_id] = one
        return found

    async def page(self, query: TaskQuery, owners: Optional[FrozenSet[str]]) -> Page:
        """One page of `query`, newest first, of the records `owners` may see
        (None: every record): [(owner, record)] and the next page's cursor
        (None at the end). A page may hold fewer than `limit` records and
        still have a cursor: it stopped after `SCAN_BUDGET` index entries."""
        if owners is not None and not owners:
            return [], None
        keys = self._keys
        if owners is None:
            indexes = [keys.all_records if query.status is None
                       else keys.status_records(query.status)]
        else:
            indexes = [keys.owner_records(owner) if query.status is None
                       else keys.status_records(query.status, owner) for owner in sorted(owners)]
        reply = await self._list(keys=indexes, args=[
            query.upper, query.lower, query.limit, SCAN_BUDGET, keys.root,
            query.name or "", query.worker or "", query.q or ""])
        following = _text(reply[0])
        records = []
        for index in range(1, len(reply), 3):
            raw, timeline = reply[index + 1], reply[index + 2]
            fields = text_fields(dict(zip(raw[::2], raw[1::2])))
            record = render(fields, _text(timeline))
            if record is not None:
                records.append((owner_of(fields), record))
        return records, (encode_cursor(following) if following else None)

    async def minutes(self, count: int, owners: Optional[FrozenSet[str]],
                      now: Optional[float] = None) -> List[dict]:
        """Tasks completed and failed in each of the last `count` minutes
        (the current one last), of `owners` (None: all)."""
        last = int((time.time() if now is None else now) // 60)
        first = last - count + 1
        if owners is None:
            fields = ["completed", "failed"]
        else:
            fields = [f"{kind}:{owner}" for owner in sorted(owners)
                      for kind in ("completed", "failed")]
        async with self._redis.pipeline(transaction=False) as pipe:
            for minute in range(first, last + 1):
                pipe.hmget(self._keys.minute_counts(minute), fields)
            replies = await pipe.execute()
        counts = []
        for minute, values in zip(range(first, last + 1), replies):
            numbers = [int(value or 0) for value in values]
            counts.append({"minute": minute * 60, "completed": sum(numbers[0::2]),
                           "failed": sum(numbers[1::2])})
        return counts

    async def sweep(self, now: Optional[float] = None) -> int:
        """Remove every record past its retention; returns how many went."""
        now_ms = int(1000 * (time.time() if now is None else now))
        removed = 0
        while True:
            batch = await self._sweep(args=[self._keys.root, now_ms, SWEEP_BATCH])
            removed += batch
            if batch < SWEEP_BATCH:
                return removed


def _one(raw, timeline) -> Optional[Tuple[Optional[str], dict]]:
    if not raw:
        return None
    fields = text_fields(raw)
    record = render(fields, _text(timeline))
    return None if record is None else (owner_of(fields), record)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
