from django.contrib import admin
from django.urls import path

from django_async_jobs import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics/jobs", views.prometheus_metrics),
]
