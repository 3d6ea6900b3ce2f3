"""Bulk pushes stream their chunks: many chunks in flight, still every job once and in order."""

from django_async_jobs.serialization import decode_payload, encode_payload
from tests.testapp.jobs import IncrJob


def test_a_bulk_of_several_chunks_arrives_whole_and_in_order(broker):
    count = 2_500  # three chunks of at most 1,000
    IncrJob.perform_bulk([(f"k{i}",) for i in range(count)])
    queued = [decode_payload(raw)["args"][0] for raw in broker.redis.zrange(broker.keys.queue("default"), 0, -1)]
    assert queued == [f"k{i}" for i in range(count)]


def test_push_stream_counts_what_it_pushed_and_leaves_the_connection_usable(broker):
    jobs = [IncrJob(f"k{i}") for i in range(5)]
    for job in jobs:
        job.queue_name = "default"
    payloads = [job.serialize() for job in jobs]

    chunks = (["default", 0, encode_payload(p)] for p in payloads)
    assert broker.push_stream(chunks) == 5
    assert broker.push_stream(iter(())) == 0
    # The same thread's next command reads its own reply, not one left over from the stream.
    assert broker.push([encode_payload({**payloads[0], "jid": "another"})]) == 1
    assert broker.queue_size("default") == 6


def test_push_stream_says_which_chunks_redis_took(broker):
    jobs = [IncrJob(f"k{i}") for i in range(4)]
    for job in jobs:
        job.queue_name = "default"
    chunks = (["default", 0, encode_payload(job.serialize())] for job in jobs)
    answered = []
    assert broker.push_stream(chunks, on_pushed=answered.append) == 4
    assert answered == [0, 1, 2, 3]


def test_one_push_routes_each_job_by_queue_and_priority_and_skips_unroutable_payloads(broker):
    def payload(jid, queue, priority=0):
        return encode_payload({"jid": jid, "job": IncrJob.job_name, "queue": queue, "args": [], "priority": priority})

    pushed = broker.push([
        payload("a1", "a"), payload("b1", "b"), payload("a2", "a", 5), payload("a3", "a"),
        "not json", encode_payload({"jid": "x", "queue": ""}),
    ])
    assert pushed == 4
    order = [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue("a"), 0, -1)]
    assert order == ["a2", "a1", "a3"]  # higher priority first, then FIFO
    assert broker.queue_size("b") == 1
    assert {q.decode() for q in broker.redis.smembers(broker.keys.queues)} >= {"a", "b"}
