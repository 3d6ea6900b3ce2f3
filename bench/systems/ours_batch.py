"""django-async-jobs with every drained job in a batch (opt-in: ``--systems ours,ours-batch``)."""

from __future__ import annotations

from bench.systems.ours import OursInBatches

SYSTEM = OursInBatches()
