"""URLs an app includes for its pages: ``path("jobs/", include("django_async_jobs.urls"))``."""

from django.urls import path

from django_async_jobs import views

app_name = "async_jobs"

urlpatterns = [
    path("progress/<str:job_id>/", views.progress, name="progress"),
]
