"""The jobs dashboard, inside the Django admin: ``install(site)`` adds its pages to an admin site.

``django_async_jobs/admin.py`` installs it on ``django.contrib.admin.site``; a project with its own
``AdminSite`` calls ``install(my_site)`` once (e.g. where the site is defined). Installing wraps
two of the site's methods on that instance only:

* ``get_urls``: the pages go under ``<admin>/django_async_jobs/dashboard/``, named in the site's
  namespace (``admin:async_jobs_overview``, ...), each behind ``site.admin_view`` (staff, CSRF);
* ``get_app_list``: a "Dashboard" row in the app's section of the admin index and sidebar, so it
  shows wherever the site lists apps, without overriding any template.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext_lazy as _

from django_async_jobs.dashboard.views import APP_LABEL, ENTRY, ROUTES


def urls(site: AdminSite) -> list[URLPattern]:
    return [
        path(f"{APP_LABEL}/dashboard/{route}", site.admin_view(partial(view, site=site)), name=name)
        for route, view, name in ROUTES
    ]


def install(site: AdminSite) -> None:
    """Add the dashboard to ``site`` (idempotent)."""
    if getattr(site, "_async_jobs_dashboard", False):
        return
    site._async_jobs_dashboard = True  # type: ignore[attr-defined]
    get_urls = site.get_urls
    get_app_list = site.get_app_list

    def get_urls_with_dashboard() -> list[Any]:
        # First: the site's own catch-all patterns must not swallow the dashboard's paths.
        return urls(site) + get_urls()

    def get_app_list_with_dashboard(request: HttpRequest, app_label: str | None = None) -> list[dict[str, Any]]:
        app_list = get_app_list(request, app_label)
        if app_label not in (None, APP_LABEL) or not site.has_permission(request):
            return app_list
        row = _entry(site)
        for app in app_list:
            if app["app_label"] == APP_LABEL:
                app["models"].insert(0, row)
                return app_list
        # The user sees none of the app's models: the section holds the dashboard alone.
        from django.apps import apps

        app_list.append({
            "name": apps.get_app_config(APP_LABEL).verbose_name, "app_label": APP_LABEL,
            "app_url": row["admin_url"], "has_module_perms": True, "models": [row],
        })
        app_list.sort(key=lambda app: str(app["name"]).lower())
        return app_list

    site.get_urls = get_urls_with_dashboard  # type: ignore[method-assign]
    site.get_app_list = get_app_list_with_dashboard  # type: ignore[method-assign]


def _entry(site: AdminSite) -> dict[str, Any]:
    return {
        "model": None, "name": _("Dashboard"), "object_name": ENTRY,
        "perms": {"add": False, "change": False, "delete": False, "view": True},
        "admin_url": reverse(f"{site.name}:async_jobs_overview", current_app=site.name),
        "add_url": None, "view_only": True,
    }
