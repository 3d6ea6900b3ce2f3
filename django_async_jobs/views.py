"""Views an app mounts: a job's progress as JSON, and the Prometheus metrics.

Only staff and the user who started the job (``started_by``) may read its progress; to anybody
else the job does not exist (404), so job ids cannot be probed. The metrics need staff, or the
``PROMETHEUS_TOKEN`` as a bearer token (a scraper has no session).
"""

from __future__ import annotations

import hmac

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from django_async_jobs import prometheus
from django_async_jobs.conf import get_settings
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


def _may_scrape(request: HttpRequest) -> bool:
    token = get_settings().raw["PROMETHEUS_TOKEN"]
    given = request.headers.get("Authorization", "")
    if token and given.startswith("Bearer "):
        return hmac.compare_digest(given[len("Bearer "):].encode(), str(token).encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """``path("metrics/jobs", views.prometheus_metrics)``: the Prometheus exposition of the job
    system (``prometheus.exposition``): 403 without staff or the token, 503 without the extra."""
    if not _may_scrape(request):
        response = HttpResponse("Staff, or Authorization: Bearer <PROMETHEUS_TOKEN>.\n", status=403, content_type="text/plain")
        response["WWW-Authenticate"] = "Bearer"
        return response
    if not prometheus.available():
        return HttpResponse(prometheus.MISSING + "\n", status=503, content_type="text/plain")
    body, content_type = prometheus.exposition()
    response = HttpResponse(body, content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response
