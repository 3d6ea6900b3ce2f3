"""The project's admin pages, and the import started from the admin."""

import pytest

from deliveries.models import ErrorReport, Import
from django_async_jobs.models import JobProgress


@pytest.mark.parametrize("model", ["recipient", "task", "payment", "outboxmessage", "import", "errorreport", "jobrun"])
def test_changelists_render(admin_client, model):
    assert admin_client.get(f"/admin/deliveries/{model}/").status_code == 200


def test_import_action_enqueues_the_import_with_a_pending_progress_row(admin_client, admin_user, broker):
    source = Import.objects.create(name="a.csv", csv="tracking_number,name,phone,email\nA-1,Ana,,\n")
    response = admin_client.post(
        "/admin/deliveries/import/", {"action": "start_import", "_selected_action": [source.pk]}, follow=True
    )
    assert "1 import(s) enqueued on the bulk queue." in response.content.decode()
    source.refresh_from_db()
    progress = JobProgress.objects.get(job_id=source.job_id)
    assert (progress.status, progress.started_by) == ("pending", admin_user)
    assert broker.queue_size("bulk") == 1
    page = admin_client.get("/admin/deliveries/import/").content.decode()
    assert "pending, 0/?" in page


def test_error_reports_are_shown_not_edited(admin_client):
    report = ErrorReport.objects.create(source="job died", job_class="ExternalApiJob", error="CarrierUnreachable: x")
    page = admin_client.get(f"/admin/deliveries/errorreport/{report.pk}/change/").content.decode()
    assert "CarrierUnreachable: x" in page and 'name="_save"' not in page
