"""django-async-jobs with per-job log lines off (opt-in: ``--systems ours,ours-nolog,...``)."""

from __future__ import annotations

from bench.systems.ours import OursNoJobLog

SYSTEM = OursNoJobLog()
