"""Interaction events (clicks, views, ratings, purchases): stored durably and exactly once per idempotency key,
and kept per user so /recommend sees a user's latest events.

Two stores:
* Redis (UNISR_REDIS_URL set): one Lua script checks the key `unisr:event-key:<key>` and XADDs the event to the
  stream `unisr:events` atomically. If Redis cannot be reached the event goes to the local log instead (fsync
  before the ack) and a background task replays the log to the stream once Redis answers; the script's key
  check makes a replay that is interrupted and repeated harmless, and the log's cursor file records how far it
  got. While a backlog exists new events also go to the log, so the stream keeps their order.
* the local log alone (no Redis): an append-only JSON-lines file, fsync before the ack; the keys already seen
  are rebuilt from it at start-up.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from bisect import insort
from collections import defaultdict

import structlog
from redis.exceptions import RedisError

from service import metrics
from service.settings import Settings
from service.stores.cache import make_redis
from service.stores.event_log import EventLog

log = structlog.get_logger("unisr.events")

KEY_PREFIX = "unisr:event-key:"
# KEYS[1] idempotency key, KEYS[2] stream, KEYS[3] the user's recent items (a sorted set by timestamp, shared by every
# replica); ARGV[1] event JSON, ARGV[2] key TTL (s), ARGV[3] timestamp, ARGV[4] item id, ARGV[5] items kept per user.
# {1, id} new, {0, id} repeat.
RECORD_LUA = """
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local id = redis.call('XADD', KEYS[2], '*', 'event', ARGV[1])
redis.call('SET', KEYS[1], id, 'EX', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), id .. ' ' .. ARGV[4])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1 - tonumber(ARGV[5]))
return {1, id}
"""
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)
REPLAY_CHUNK = 500


def event_json(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), sort_keys=True)


class EventStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.log = EventLog(settings.events_log_path)
        self.redis = make_redis(settings.redis_url, settings.redis_timeout_s) if settings.redis_url else None
        self.kind = "redis" if self.redis is not None else "log"
        self._script = self.redis.register_script(RECORD_LUA) if self.redis is not None else None
        self._keys: set[str] = set()  # keys in the local log
        self._recent: dict[str, list[tuple[float, str]]] = defaultdict(list)  # user -> (timestamp, item), sorted
        self._lock = asyncio.Lock()
        self._replayer: asyncio.Task | None = None
        self.pending = 0  # events in the local log not yet in the Redis stream
        self.redis_ok: bool | None = None

    # -- start-up and shutdown ---------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.log.open)
        cursor = self.log.cursor() if self.redis is not None else 0
        logged = await asyncio.to_thread(lambda: list(self.log.read()))
        from_stream = await self._load_stream() if self.redis is not None else None
        for offset, event in logged:
            self._keys.add(event["key"])
            if self.redis is not None and offset > cursor:
                self.pending += 1
            if from_stream is None or offset > cursor:  # replayed events come back from the stream
                self._remember(event)
        for event in from_stream or []:
            self._remember(event)
        metrics.EVENTS_PENDING.set(self.pending)
        if self.redis is not None:
            self._replayer = asyncio.get_running_loop().create_task(self._replay_forever())
        log.info("events_ready", store=self.kind, log=str(self.log.path), logged=len(logged),
                 from_stream=None if from_stream is None else len(from_stream), pending=self.pending)

    async def _load_stream(self) -> list[dict] | None:
        events, start = [], "-"
        try:
            while True:
                page = await self.redis.xrange(self.settings.events_stream, min=start, count=1000)
                events.extend(json.loads(fields[b"event"]) for _, fields in page)
                if len(page) < 1000:
                    break
                start = "(" + page[-1][0].decode()
            self.redis_ok = True
            return events
        except REDIS_DOWN as e:
            self.redis_ok = False
            log.warning("events_stream_unreadable", error=str(e))
            return None

    async def close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._replayer
        if self.redis is not None:
            await self.redis.aclose()
        self.log.close()

    # -- the per-user view ---------------------------------------------------------------------------------
    def _remember(self, event: dict) -> None:
        items = self._recent[event["user_id"]]
        insort(items, (float(event["timestamp"]), event["item_id"]))
        if len(items) > self.settings.events_recent_per_user:
            del items[0]

    def recent(self, user_id: str | None) -> list[str]:
        """The user's latest event item ids, oldest first, as this replica has seen them."""
        return [item for _, item in self._recent.get(user_id or "", [])]

    def _user_key(self, user_id: str) -> str:
        return f"{self.settings.events_stream}:recent:{user_id}"

    async def recent_shared(self, user_id: str | None) -> list[str]:
        """The user's latest event item ids, oldest first: from Redis (what every replica recorded) when it is
        configured and answers, else this replica's view (recent())."""
        if not user_id or self.redis is None or self.pending > 0:  # a backlog in the local log: Redis lags behind
            return self.recent(user_id)
        try:
            members = await self.redis.zrange(self._user_key(user_id), 0, -1)
        except REDIS_DOWN:
            return self.recent(user_id)
        return [m.decode().split(" ", 1)[1] for m in members]

    def _script_args(self, event: dict) -> dict:
        return {"keys": [KEY_PREFIX + event["key"], self.settings.events_stream, self._user_key(event["user_id"])],
                "args": [event_json(event), self.settings.events_key_ttl_s, float(event["timestamp"]),
                         event["item_id"], self.settings.events_recent_per_user]}

    # -- recording -------------------------------------------------------------------------------------------
    async def record(self, event: dict) -> tuple[bool, str, str]:
        """Store the event durably; (new, where, id). new=False: its idempotency key was seen before."""
        event = {**event, "timestamp": event.get("timestamp") or time.time()}
        if self.redis is not None and self.pending <= 0 and event["key"] not in self._keys:
            try:
                created, sid = await self._script(**self._script_args(event))
                self.redis_ok = True
                return self._acked(event, bool(created), "redis", sid.decode() if isinstance(sid, bytes) else sid)
            except REDIS_DOWN as e:
                self.redis_ok = False
                log.warning("events_redis_down", error=str(e))
        async with self._lock:  # the key check and the append are one step
            if event["key"] in self._keys:
                return self._acked(event, False, "log", "")
            offset = await asyncio.to_thread(self.log.append, event)
            self._keys.add(event["key"])
        if self.redis is not None:
            self.pending += 1
            metrics.EVENTS_PENDING.set(max(0, self.pending))
        return self._acked(event, True, "log", f"log:{offset}")

    def _acked(self, event: dict, new: bool, where: str, sid: str) -> tuple[bool, str, str]:
        if new:
            self._remember(event)
        metrics.EVENTS.labels(where, "new" if new else "duplicate").inc()
        return new, where, sid

    # -- replay of the local log to Redis ---------------------------------------------------------------------
    async def replay(self) -> int:
        """Copy the log past the cursor to the stream; returns the number of events copied."""
        copied, cursor, end = 0, self.log.cursor(), self.log.size
        while cursor < end:
            chunk = await asyncio.to_thread(self._read_chunk, cursor, end)
            if not chunk:
                break
            pipe = self.redis.pipeline(transaction=False)
            for _, event in chunk:
                await self._script(**self._script_args(event), client=pipe)
            await pipe.execute()
            cursor = chunk[-1][0]
            await asyncio.to_thread(self.log.set_cursor, cursor)
            copied += len(chunk)
            self.pending -= len(chunk)
            metrics.EVENTS_PENDING.set(max(0, self.pending))
        return copied

    def _read_chunk(self, start: int, end: int) -> list[tuple[int, dict]]:
        return [x for _, x in zip(range(REPLAY_CHUNK), self.log.read(start, end))]

    async def _replay_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.events_replay_interval_s)
            if self.log.cursor() >= self.log.size:
                continue
            try:
                copied = await self.replay()
                self.redis_ok = True
                if copied:
                    log.info("events_replayed", count=copied, pending=max(0, self.pending))
            except REDIS_DOWN as e:
                self.redis_ok = False
                log.debug("events_replay_waiting", error=str(e))

    async def status(self) -> dict:
        if self.redis is not None and self.pending <= 0:
            try:
                self.redis_ok = bool(await self.redis.ping())
            except REDIS_DOWN:
                self.redis_ok = False
        return {"store": self.kind, "log": str(self.log.path), "pending_replay": max(0, self.pending),
                "redis_ok": self.redis_ok}
