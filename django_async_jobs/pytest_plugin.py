"""The pytest plugin (entry point ``pytest11``): the ``async_jobs`` fixture.

Loaded in every pytest run where the package is installed, so it defines fixtures only and
imports Django code lazily: suites that do not ask for ``async_jobs`` see no change at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_async_jobs.testing import JobsTestHelper


@pytest.fixture
def async_jobs() -> Iterator[JobsTestHelper]:
    """``ASYNC_JOBS["MODE"] = "test"`` for this test, and the helper to assert on jobs."""
    from django_async_jobs.testing import jobs_test_mode

    with jobs_test_mode("test") as helper:
        yield helper


@pytest.fixture
def async_jobs_inline() -> Iterator[JobsTestHelper]:
    """``ASYNC_JOBS["MODE"] = "inline"``: every job runs at once, in the test's thread."""
    from django_async_jobs.testing import jobs_test_mode

    with jobs_test_mode("inline") as helper:
        yield helper
