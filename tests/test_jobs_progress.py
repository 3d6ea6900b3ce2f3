"""Long `jobs dead` operations draw a progress bar: on a terminal, or when asked (--progress)."""

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from django_async_jobs.models import DeadJob
from tests.testapp.jobs import IncrJob

COUNT = 2_500  # three chunks of 1,000


def make_dead(count: int, died_at: datetime) -> None:
    DeadJob.objects.bulk_create(
        [
            DeadJob(
                dead_id=f"d{i}", job_id=f"j{i}", job_class=IncrJob.job_name, queue="default",
                reason="retries_exhausted", died_at=died_at,
                payload=json.dumps({"jid": f"j{i}", "job": IncrJob.job_name, "queue": "default", "args": ["k"]}),
            )
            for i in range(count)
        ],
        batch_size=1000,
    )


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("jobs", "dead", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_retry_draws_a_bar_per_chunk_when_asked(broker):
    make_dead(COUNT, datetime.now(UTC))
    out, err = run("retry", "--all", "--yes", "--progress")
    frames = err.split("\r")[1:]
    assert [f.split("] ")[1].strip() for f in frames] == ["1000/2500", "2000/2500", "2500/2500"]
    assert frames[-1].startswith("retrying [" + "#" * 30 + "]") and err.endswith("\n")
    assert f"Retried {COUNT} dead jobs." in out
    assert broker.queue_size("default") == COUNT and not DeadJob.objects.exists()


@pytest.mark.django_db
def test_prune_draws_its_bar_and_a_pipe_gets_the_summary_alone(broker):
    make_dead(COUNT, datetime.now(UTC) - timedelta(days=400))
    out, err = run("prune", "--older-than", "30", "--yes")
    assert err == ""  # stderr is not a terminal and no --progress: no bar
    assert f"Pruned {COUNT} dead jobs" in out
    make_dead(10, datetime.now(UTC) - timedelta(days=400))
    _, err = run("prune", "--older-than", "30", "--yes", "--progress")
    assert err == "\rpruning [" + "#" * 30 + "] 10/10\n"
