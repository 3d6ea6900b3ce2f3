"""Benchmarks: django-async-jobs against RQ, Celery, Dramatiq and Huey on one Redis."""
