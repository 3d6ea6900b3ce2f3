"""A JSON view of a job's progress, for an app's own page to poll.

Only staff and the user who started the job (``started_by``) may read it; to anybody else the
job does not exist (404), so job ids cannot be probed.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from django_async_jobs.models import JobProgress


@require_GET
@login_required
def progress(request: HttpRequest, job_id: str) -> JsonResponse:
    """``GET <prefix>/progress/<job_id>/`` (``?name=`` for a job tracking several things)."""
    row = JobProgress.objects.filter(job_id=job_id, name=request.GET.get("name", "")).first()
    user = request.user
    if row is None or not (user.is_staff or (row.started_by_id is not None and row.started_by_id == user.pk)):
        raise Http404("No such job progress.")
    response = JsonResponse(row.as_dict())
    response["Cache-Control"] = "no-store"
    return response
