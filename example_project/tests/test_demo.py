"""``manage.py demo --wait``: every scenario against a real worker and the fake carrier."""

import pytest
from django.core.management import CommandError, call_command

from deliveries.models import ErrorReport
from django_async_jobs.models import DeadJob


def test_demo_drives_every_job_and_checks_what_happened(carrier, worker, capsys, settings):
    settings.IMPORTS = {"MAX_RUNTIME": 0.1}  # as demo.sh: the import goes on in several runs
    call_command("demo", wait=40)

    out = capsys.readouterr().out
    assert "NOT AS EXPECTED" not in out
    assert "28 scenarios, as expected" in out
    assert "0 over the carrier's own rate limit (429)" in out  # the burst stayed under it
    assert "import    demo-tasks.csv: completed_with_errors, 500/500 rows (100.0%), 5 refused, in " in out
    runs = int(out.split("5 refused, in ")[1].split()[0])
    assert runs >= 2 and "run 1 interrupted (max_iteration_runtime reached) at cursor" in out
    assert DeadJob.objects.filter(job_class="deliveries.jobs.ExternalApiJob").count() == 1
    assert ErrorReport.objects.filter(source="permanent failure").count() == 1


def test_demo_refuses_to_start_without_a_carrier(settings, broker, db):
    settings.CARRIER_API = {**settings.CARRIER_API, "URL": "http://127.0.0.1:9"}
    with pytest.raises(CommandError, match="No carrier answers"):
        call_command("demo", wait=1)
