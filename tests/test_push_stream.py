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

    chunks = ([encode_payload(p)] for p in payloads)
    assert broker.push_stream(chunks) == 5
    assert broker.push_stream(iter(())) == 0
    # The same thread's next command reads its own reply, not one left over from the stream.
    assert broker.push([encode_payload({**payloads[0], "jid": "another"})]) == 1
    assert broker.queue_size("default") == 6
