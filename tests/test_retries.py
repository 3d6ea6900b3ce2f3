"""retry_on / discard_on / the default policy, on a real Redis with an in-process worker."""

import json
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import ApplicationJob, discard, retry, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.retries import default_backoff, match, polynomially_longer
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.retry_jobs import (
    CallbackJob,
    ClientError,
    DefaultPolicyJob,
    FailingJob,
    ManualRetryJob,
    NoRetryJob,
    RetryFalseJob,
    SpecificClientError,
    Transient,
)


@pytest.fixture
def key(prefix):
    return f"{prefix}:effects"


def retry_entries(broker):
    return [(json.loads(p), score) for p, score in broker.redis.zrange(broker.keys.retry, 0, -1, withscores=True)]


def staged_dead(broker):
    return [json.loads(v) for v in broker.redis.hvals(broker.keys.dead)]


def count(broker, key):
    return int(broker.redis.get(key) or 0)


@pytest.mark.parametrize(
    ("error", "delay", "rule"),
    [
        ("transient", 5, "Transient"),
        ("timeout", 3, "builtins.TimeoutError"),
        ("rate", 10, "RateLimited"),
    ],
)
def test_each_wait_form_gives_its_exact_delay(broker, worker, key, error, delay, rule):
    job = FailingJob.perform_later(key, error)
    before = time.time()
    [(payload, score)] = wait_for(lambda: retry_entries(broker))
    assert payload["jid"] == job.job_id
    assert payload["executions"] == 1
    assert list(payload["retries"].values()) == [1]
    assert rule.split(".")[-1] in next(iter(payload["retries"]))
    assert before + delay - 0.5 <= score <= time.time() + delay + 0.01
    assert count(broker, key) == 1


def test_polynomially_longer_matches_activejob():
    assert [polynomially_longer(n) for n in range(1, 6)] == [3, 18, 83, 258, 627]
    rule = retry(TimeoutError, wait=polynomially_longer)
    delays = [rule.delay(2) for _ in range(200)]
    assert 18 <= min(delays) and max(delays) <= 18 * 1.15
    assert max(delays) > 18  # jitter is on by default


def test_default_backoff_is_sidekiqs():
    for n in range(5):
        values = {default_backoff(n) for _ in range(300)}
        assert min(values) >= n**4 + 15 and max(values) <= n**4 + 15 + 10 * (n + 1)


def test_attempts_exhausted_sends_the_job_to_the_dead_stage(broker, worker, key):
    job = FailingJob.perform_later(key, "connection")
    [dead] = wait_for(lambda: staged_dead(broker))
    assert count(broker, key) == 3  # the first execution counts as an attempt
    assert dead["job_id"] == job.job_id
    assert dead["reason"] == "retries_exhausted"
    assert dead["error_class"] == "builtins.ConnectionError"
    assert "Traceback" in dead["traceback"]
    assert dead["executions"] == 3
    assert json.loads(dead["payload"])["jid"] == job.job_id
    assert retry_entries(broker) == []
    assert broker.stat("failed") == 3


def test_unlimited_attempts_keep_retrying(broker, worker, key):
    FailingJob.perform_later(key, "key", stop_after=8)
    wait_for(lambda: count(broker, key) >= 8, timeout=30)
    time.sleep(0.3)
    assert staged_dead(broker) == []
    assert count(broker, key) == 8


def test_per_rule_queue_and_priority(broker, worker, key):
    FailingJob.perform_later(key, "os")
    [(payload, _)] = wait_for(lambda: retry_entries(broker))
    assert payload["queue"] == "low"
    assert payload["priority"] == 5


def test_most_specific_rule_wins():
    class Job(ApplicationJob):
        retry_on = [retry(Exception, attempts=2), retry(LookupError, attempts=3)]
        discard_on = [ValueError]

        def perform(self):
            pass

    assert match(Job._rules, KeyError()).attempts == 3
    assert match(Job._rules, UnicodeError()).exceptions == (ValueError,)
    assert match(Job._rules, RuntimeError()).attempts == 2


def test_ties_go_to_the_rule_declared_first():
    class Job(ApplicationJob):
        retry_on = [retry(KeyError, IndexError, attempts=2), retry(IndexError, attempts=9)]

        def perform(self):
            pass

    assert match(Job._rules, IndexError()).attempts == 2


def test_discard_drops_the_job_and_calls_after_discard(broker, worker, key):
    seen = []

    def receiver(sender, job, exception, **kwargs):
        seen.append((sender, job.job_id, type(exception)))

    signals.job_discarded.connect(receiver)
    try:
        job = FailingJob.perform_later(key, "client")
        wait_for(lambda: broker.redis.get(f"{key}:discarded"))
        wait_for(lambda: broker.stat("processed") == 1)
    finally:
        signals.job_discarded.disconnect(receiver)
    assert broker.redis.get(f"{key}:discarded") == b"SpecificClientError"
    assert seen == [(FailingJob, job.job_id, SpecificClientError)]
    assert staged_dead(broker) == [] and retry_entries(broker) == []
    assert broker.redis.hlen(broker.keys.inflight(worker.process_id)) == 0


def test_rule_callbacks_replace_death_and_run_on_discard(broker, worker, key):
    CallbackJob.perform_later(key, "transient")
    wait_for(lambda: broker.redis.get(f"{key}:exhausted"))
    assert count(broker, key) == 2
    CallbackJob.perform_later(key, "client")
    wait_for(lambda: broker.redis.get(f"{key}:on_discard"))
    time.sleep(0.2)
    assert staged_dead(broker) == []


def test_unmatched_exception_follows_the_default_policy(broker, worker, key):
    DefaultPolicyJob.perform_later(key)
    before = time.time()
    [(payload, score)] = wait_for(lambda: retry_entries(broker))
    assert payload["retry_count"] == 1
    assert "retries" not in payload
    assert before + 15 - 0.5 <= score <= time.time() + 25


@pytest.mark.parametrize("job_class", [NoRetryJob, RetryFalseJob])
def test_no_retries_means_dead_at_the_first_failure(broker, worker, key, job_class):
    job_class.perform_later(key)
    [dead] = wait_for(lambda: staged_dead(broker))
    assert dead["reason"] == "retries_exhausted"
    assert count(broker, key) == 1


class OnlyTimeoutsJob(ApplicationJob):
    """The clash the old name had: a class body that turns the default policy off and then
    calls retry()."""

    retry_by_default = False
    retry_on = [retry(TimeoutError, wait=60, attempts=3, jitter=0)]

    def perform(self, key, error):
        get_broker().redis.incr(key)
        raise TimeoutError("slow") if error == "timeout" else ValueError("bad")


def test_retry_by_default_false_next_to_retry_on(broker, worker, key):
    OnlyTimeoutsJob.perform_later(key, "timeout")
    [(payload, _)] = wait_for(lambda: retry_entries(broker))
    assert list(payload["retries"].values()) == [1]
    OnlyTimeoutsJob.perform_later(key, "value")
    [dead] = wait_for(lambda: staged_dead(broker))
    assert dead["reason"] == "retries_exhausted" and dead["error_class"].endswith("ValueError")
    assert count(broker, key) == 2


def test_retry_false_still_works_with_a_deprecation_warning(broker, worker, key):
    with pytest.warns(DeprecationWarning, match=r"LegacyJob\.retry = False is deprecated: write retry_by_default = False") as seen:
        class LegacyJob(ApplicationJob):
            retry = False

            def perform(self, key):
                get_broker().redis.incr(key)
                raise ValueError("die at once")

    assert seen[0].filename == __file__  # points at the class statement
    assert LegacyJob.retry_by_default is False
    LegacyJob.perform_later(key)
    [dead] = wait_for(lambda: staged_dead(broker))
    assert dead["reason"] == "retries_exhausted" and count(broker, key) == 1


def test_retry_by_default_must_be_a_bool():
    with pytest.raises(ImproperlyConfigured, match=r"Sloppy\.retry_by_default must be True or False, got 0"):
        class Sloppy(ApplicationJob):
            retry_by_default = 0

            def perform(self):
                pass


def test_max_retries_setting_applies_to_unmatched_errors(broker, settings, key):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MAX_RETRIES": 0}
    w = Worker()
    w.start()
    try:
        DefaultPolicyJob.perform_later(key)
        wait_for(lambda: staged_dead(broker))
    finally:
        w.stop(timeout=1)


def test_error_and_death_handlers_are_called_and_a_broken_one_is_harmless(broker, settings, key):
    settings.ASYNC_JOBS = {
        **settings.ASYNC_JOBS,
        "ERROR_HANDLERS": ["tests.testapp.handlers.broken", "tests.testapp.handlers.record_error"],
        "DEATH_HANDLERS": ["tests.testapp.handlers.broken", "tests.testapp.handlers.record_death"],
    }
    w = Worker()
    w.start()
    try:
        job = NoRetryJob.perform_later(key)
        wait_for(lambda: broker.redis.llen(f"{key}:deaths"))
        assert [json.loads(x) for x in broker.redis.lrange(f"{key}:errors", 0, -1)] == [[job.job_id, "ValueError"]]
        assert [json.loads(x) for x in broker.redis.lrange(f"{key}:deaths", 0, -1)] == [[job.job_id, "ValueError"]]
        # The worker is still working.
        NoRetryJob.perform_later(key)
        wait_for(lambda: broker.redis.llen(f"{key}:deaths") == 2)
    finally:
        w.stop(timeout=1)


def test_a_raising_signal_receiver_never_stops_the_worker(broker, worker, key):
    def boom(**kwargs):
        raise RuntimeError("receiver bug")

    signals.job_failed.connect(boom)
    signals.job_died.connect(boom)
    try:
        NoRetryJob.perform_later(key)
        wait_for(lambda: staged_dead(broker))
    finally:
        signals.job_failed.disconnect(boom)
        signals.job_died.disconnect(boom)


@pytest.mark.parametrize("how", ["retry_job", "set"])
def test_manual_retry_from_inside_perform(broker, worker, key, how):
    ManualRetryJob.perform_later(key, how)
    wait_for(lambda: count(broker, key) == 2)
    wait_for(lambda: broker.stat("processed") == 2)
    assert staged_dead(broker) == [] and retry_entries(broker) == []
    assert broker.stat("failed") == 0


def test_retry_job_keeps_the_job_id_and_executions(broker, key):
    job = ManualRetryJob(key, "retry_job")
    job.queue_name = "default"
    job.perform_now()
    [(raw, _)] = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)
    payload = json.loads(raw)
    assert payload["jid"] == job.job_id
    assert payload["executions"] == 1


def test_bad_rule_declarations_are_refused_when_the_class_is_defined():
    with pytest.raises(ImproperlyConfigured, match="retry_on takes retry"):
        class Bare(ApplicationJob):
            retry_on = [Transient]

            def perform(self):
                pass

    with pytest.raises(ImproperlyConfigured, match="both retries and discards"):
        class Both(ApplicationJob):
            retry_on = [retry(ClientError)]
            discard_on = [discard(ClientError)]

            def perform(self):
                pass

    with pytest.raises(TypeError, match="attempts"):
        retry(Transient, attempts=0)
    with pytest.raises(TypeError, match="exception classes"):
        retry("Transient")
    with pytest.raises(TypeError, match="jitter"):
        retry(Transient, jitter=2)


# -- Reschedule: put back, not a failure ---------------------------------------------------------


def test_a_reschedule_puts_the_job_back_with_its_changes_and_is_not_a_failure(broker, worker, key):
    from tests.testapp.jobs import ComeBackJob

    failures = []
    signals.job_failed.connect(receiver := lambda sender, **kw: failures.append(kw), weak=False)
    try:
        ComeBackJob.perform_later(key, 2)
        wait_for(lambda: broker.redis.llen(key) == 3, 20, "three executions")
    finally:
        signals.job_failed.disconnect(receiver)
    assert [v.decode() for v in broker.redis.lrange(key, 0, -1)] == [
        "step 0 execution 1", "step 1 execution 2", "step 2 execution 3",
    ]
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert failures == [] and broker.stat("failed") == 0
    assert broker.stat("processed") == 1  # the last execution only: the others were put back
    assert broker.redis.zcard(broker.keys.retry) == 0


def test_a_reschedule_sends_no_success_signal(broker, worker, key):
    from tests.testapp.jobs import ComeBackJob

    succeeded = []
    signals.job_succeeded.connect(receiver := lambda sender, job, **kw: succeeded.append(job.executions), weak=False)
    try:
        ComeBackJob.perform_later(key, 1)
        wait_for(lambda: broker.redis.llen(key) == 2, 20, "two executions")
        wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    finally:
        signals.job_succeeded.disconnect(receiver)
    assert succeeded == [2]  # the execution that was put back did not succeed


def test_a_drop_acknowledges_the_job_with_its_outcome_and_is_not_a_failure(broker, worker, key, caplog):
    from tests.testapp.jobs import DropJob

    sent = []
    receivers = [lambda sender, name=name, **kw: sent.append(name) for name in ("failed", "succeeded", "died")]
    for name, receiver in zip(("failed", "succeeded", "died"), receivers, strict=True):
        getattr(signals, f"job_{name}").connect(receiver, weak=False)
    try:
        with caplog.at_level("INFO", "django_async_jobs.job"):
            job = DropJob.perform_later(key)
            wait_for(lambda: broker.stat("processed") == 1, 20, "the job settled")
    finally:
        for name, receiver in zip(("failed", "succeeded", "died"), receivers, strict=True):
            getattr(signals, f"job_{name}").disconnect(receiver)
    assert broker.redis.lrange(key, 0, -1) == [b"execution 1"]
    assert sent == [] and broker.stat("failed") == 0
    assert broker.redis.zcard(broker.keys.retry) == 0 and broker.redis.hlen(broker.keys.dead) == 0
    assert f"{job.job_id} queue=default" in caplog.text and "outcome=skipped" in caplog.text


def test_a_reschedule_with_a_delay_waits_in_the_schedule(broker, worker, key):
    from tests.testapp.jobs import ComeBackJob

    job = ComeBackJob.perform_later(key, 1, 3600)
    [(member, score)] = wait_for(lambda: broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True), 20, "scheduled")
    payload = json.loads(member)
    assert (payload["jid"], payload["step"], payload["executions"]) == (job.job_id, 1, 1)
    assert 3500 < score - time.time() <= 3600


def test_a_reschedule_in_the_test_modes_keeps_the_job(key):
    from django_async_jobs.testing import jobs_test_mode
    from tests.testapp.jobs import ComeBackJob

    with jobs_test_mode() as jobs:
        ComeBackJob.perform_later(key, 1)
        assert jobs.perform_enqueued_jobs() == 2
        assert [record.payload.get("step", 0) for record in jobs.performed_jobs] == [0, 1]
