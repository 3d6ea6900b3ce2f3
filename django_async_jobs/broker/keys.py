"""Every Redis key the project uses, built from ``KEY_PREFIX`` in this one place.

Layout (``p`` is the prefix; in a Redis Cluster ``{KEY_PREFIX}``, and ``{KEY_PREFIX:<n>}`` for
partition n > 0 of ``CLUSTER_PARTITIONS``, see ``Keys.cluster``):

=====================================  =========  ===============================================
key                                    type       holds
=====================================  =========  ===============================================
``p:queue:<name>``                     zset       ready jobs; score = priority band, then job id order
``p:queues``                           set        names of every queue ever pushed to
``p:paused``                           set        names of paused queues: no worker fetches from them
``p:seq``                              string     fetch numbers (the in-flight fields' suffix)
``p:schedule``                         zset       delayed jobs; score = run-at epoch seconds
``p:retry``                            zset       jobs waiting for a retry; score = run-at
``p:processes``                        zset       worker process id -> last heartbeat (Redis TIME)
``p:process:<id>``                     hash       a process's info (host, pid, queues, ...)
``p:process:<id>:signal``              string     "quiet" or "stop", set by the dashboard, read by a beat
``p:inflight:<id>``                    hash       a process's fetched, unacknowledged jobs
``p:fetched:<id>``                     hash       a process's last fetch attempt and the fields it returned
``p:recoveries``                       hash       job id -> times handed back with a recovery counted
``p:dead``                             hash       dead jobs staged for the database
``p:stat:<name>`` / ``:<YYYY-MM-DD>``  string     processed / failed counters, total and daily;
                                                  expired, total
``p:notify``                           channel    "work is ready" wake-ups for idle workers
``p:lock:<job>:<digest>``              string     a unique job's enqueue lock; value = job id
``p:runlock:<job>:<digest>``           string     a unique job's run lock; value = in-flight field
``p:cron:<name>``                      hash       a recurring entry's last tick, job id, time; and its
                                                  last "Run now" (manual_at, manual_job_id)
``p:result:<id>``                      string     a django.tasks result (JSON), kept RESULT_TTL
``p:lease:<chore>``                     string     which process does a chore now (dead flush, prune,
                                                  ``outbox:<alias>``: relaying that database's outbox)
``p:outbox:relayed``                   zset       job ids the outbox relay pushed and whose rows may
                                                  still exist -> time pushed (relay.lua)
``p:concurrency:<id>``                  hash       a concurrency limit's places: in-flight field (or
                                                  "@<job id>", kept) -> "<expiry ms> <process id>"
``p:concurrency:<id>:blocked``          zset       its blocked jobs; score = when blocked (ms)
``p:blocked``                          zset       ids of limits with blocked jobs -> next look (ms)
``p:limit:<kind>:<name>``              varies     a rate limiter's state (window/bucket: hash; leaky:
                                                  string; concurrent: zset of lock token -> timeout)
``p:cancel:<job id>``                   string     a job cancelled by ``api.cancel``; expires after CANCEL_TTL
``p:batch:<bid>``                      hash       a batch (batches.py): counters, callbacks (JSON lists of
                                                  payloads), when each fired; ``j:<job id>`` -> the
                                                  member's state. Expires BATCH_RETENTION after it
                                                  finished, PENDING_TTL after its last addition
``p:batches``                          zset       batch ids -> created at (epoch s), for listings
``p:metrics:<minute>``                  hash       per-class metrics of one minute (epoch // 60):
                                                  ``<class>|<stat>`` -> amount; expires after
                                                  METRICS_RETENTION (metrics.py)
``p:metrics:h:<hour>``                  hash       the same summed over an hour (epoch // 3600), for
                                                  long windows; expires METRICS_RETENTION after
                                                  its hour (metrics.lua writes both at once)
``p:metrics:marks``                     zset       deploy marks: "<epoch> <label>" -> epoch
=====================================  =========  ===============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GLOB = re.compile(r"([*?\[\]\\])")


def escape_glob(text: str) -> str:
    """``text`` matched literally by a Redis glob (SCAN MATCH, KEYS): ``*?[]\\`` escaped."""
    return _GLOB.sub(r"\\\1", text)


@dataclass(frozen=True)
class Keys:
    """The keys of one key space; every key starts with ``prefix`` and a colon."""

    prefix: str

    @classmethod
    def cluster(cls, key_prefix: str, partition: int = 0) -> Keys:
        """The keys of one partition in a Redis Cluster: the prefix as a hash tag,
        ``{KEY_PREFIX}`` for partition 0 (the only one before partitions came), else
        ``{KEY_PREFIX:<partition>}``.

        A Lua step may only touch keys of one slot, and it builds some keys itself (a queue's
        from a payload's queue name, a dead process's in-flight hash from its id); with the tag,
        every key of a partition hashes to the tag's slot, so each step's keys, declared or
        built, live together on one master. Each partition is a whole key space (queues,
        schedule, retries, in-flight hashes, processes, stats); ``CLUSTER_PARTITIONS`` of them
        spread the work over the masters that serve their slots."""
        return cls(f"{{{key_prefix}}}" if partition == 0 else f"{{{key_prefix}:{partition}}}")

    def queue(self, name: str) -> str:
        return f"{self.prefix}:queue:{name}"

    @property
    def queue_base(self) -> str:
        """Lua builds a queue key from a payload's queue name with this base."""
        return f"{self.prefix}:queue:"

    @property
    def queues(self) -> str:
        return f"{self.prefix}:queues"

    @property
    def paused(self) -> str:
        """Queues no worker fetches from (``api.pause_queue``); kept until resumed."""
        return f"{self.prefix}:paused"

    @property
    def seq(self) -> str:
        return f"{self.prefix}:seq"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}:schedule"

    @property
    def retry(self) -> str:
        return f"{self.prefix}:retry"

    @property
    def processes(self) -> str:
        return f"{self.prefix}:processes"

    def process(self, process_id: str) -> str:
        return f"{self.prefix}:process:{process_id}"

    def process_signal(self, process_id: str) -> str:
        """Read (and deleted) by the process's heartbeat: how the dashboard quiets or stops it."""
        return f"{self.prefix}:process:{process_id}:signal"

    @property
    def process_base(self) -> str:
        return f"{self.prefix}:process:"

    def inflight(self, process_id: str) -> str:
        return f"{self.prefix}:inflight:{process_id}"

    @property
    def inflight_base(self) -> str:
        return f"{self.prefix}:inflight:"

    def fetched(self, process_id: str) -> str:
        """The process's last fetch attempt: what makes a fetch whose reply was lost harmless."""
        return f"{self.prefix}:fetched:{process_id}"

    @property
    def fetched_base(self) -> str:
        return f"{self.prefix}:fetched:"

    @property
    def recoveries(self) -> str:
        return f"{self.prefix}:recoveries"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    def lease(self, name: str) -> str:
        """A short lease so one process at a time does a housekeeping chore (flush, prune)."""
        return f"{self.prefix}:lease:{name}"

    def outbox_lease(self, alias: str) -> str:
        """Held by the one process relaying database ``alias``'s outbox rows to Redis."""
        return self.lease(f"outbox:{alias}")

    @property
    def outbox_relayed(self) -> str:
        """The ids of jobs relayed from an outbox: a relay that dies between its push and the
        rows' delete never pushes them twice."""
        return f"{self.prefix}:outbox:relayed"

    def stat(self, name: str, day: str | None = None) -> str:
        return f"{self.prefix}:stat:{name}" if day is None else f"{self.prefix}:stat:{name}:{day}"

    @property
    def notify(self) -> str:
        return f"{self.prefix}:notify"

    def lock(self, job_name: str, digest: str) -> str:
        return f"{self.lock_base}{job_name}:{digest}"

    @property
    def lock_base(self) -> str:
        return f"{self.prefix}:lock:"

    def run_lock(self, job_name: str, digest: str) -> str:
        return f"{self.run_lock_base}{job_name}:{digest}"

    @property
    def run_lock_base(self) -> str:
        return f"{self.prefix}:runlock:"

    def cron(self, name: str) -> str:
        return f"{self.prefix}:cron:{name}"

    def concurrency(self, limit_id: str) -> str:
        """A concurrency limit's places (flow.limit_concurrency); ``limit_id`` is
        ``<job name>:<digest of the key>``."""
        return f"{self.prefix}:concurrency:{limit_id}"

    def concurrency_blocked(self, limit_id: str) -> str:
        return f"{self.prefix}:concurrency:{limit_id}:blocked"

    @property
    def blocked(self) -> str:
        """Ids of the concurrency limits that have blocked jobs, scored by when to look again."""
        return f"{self.prefix}:blocked"

    def limiter(self, kind: str, name: str) -> str:
        """A rate limiter's state (flow.RateLimit); the kind is part of the key, as each keeps
        a different type."""
        return f"{self.prefix}:limit:{kind}:{name}"

    @property
    def limiters(self) -> str:
        """Matches every rate limiter's key (the dashboard lists those in use)."""
        return f"{escape_glob(self.prefix)}:limit:*"

    def cancel(self, job_id: str) -> str:
        """Marks a job cancelled (``api.cancel``): a worker holding it drops it or stops it at
        its next checkpoint (``resumable.py``)."""
        return f"{self.prefix}:cancel:{job_id}"

    def batch(self, bid: str) -> str:
        """A batch's counters, callbacks and members (batches.py, batch.lua, settle.lua)."""
        return f"{self.batch_base}{bid}"

    @property
    def batch_base(self) -> str:
        return f"{self.prefix}:batch:"

    @property
    def batches(self) -> str:
        """Every batch's id, scored by creation time: what listings page through."""
        return f"{self.prefix}:batches"

    def metrics(self, minute: int) -> str:
        """One minute's per-class metrics (``metrics.py``); ``minute`` is epoch seconds // 60."""
        return f"{self.prefix}:metrics:{minute}"

    def metrics_hour(self, hour: int) -> str:
        """One hour's per-class metrics, the sum of its minutes' (``hour`` is epoch seconds //
        3600): a 72-hour window reads 72 of these instead of 4,320 minutes."""
        return f"{self.prefix}:metrics:h:{hour}"

    @property
    def metrics_marks(self) -> str:
        """Deploy marks shown on the metrics charts."""
        return f"{self.prefix}:metrics:marks"

    def result(self, result_id: str) -> str:
        return f"{self.prefix}:result:{result_id}"

    @property
    def pattern(self) -> str:
        """Matches every key of this prefix and no other (for tooling and test clean-up): the
        system check refuses glob characters in a prefix, and they are escaped here anyway."""
        return f"{escape_glob(self.prefix)}:*"
