"""``python -m chaos [--size full|short] [--only NAME ...]``: run the fault suite, print each
scenario's figures as a Markdown table, exit 1 when any scenario failed.

Every Redis here is a redis-server of the suite's own on a free port; the database is a SQLite
file, or, when ``DATABASE_URL`` names PostgreSQL, a database ``<name>_chaos`` created for the
run and dropped after it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["full", "short"], default="full")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this scenario (repeatable): kill9, restart, outbox, freeze, database, crafted")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, Redis files)")
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    from chaos.harness import Database

    db = Database(workdir, os.environ.get("DATABASE_URL"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "chaos.settings"
    os.environ["CHAOS_DATABASE_URL"] = db.url
    import django

    django.setup()

    from chaos.harness import HEADER
    from chaos.scenarios import FULL, SCENARIOS, SHORT, Env
    from tests.helpers import RedisServer

    unknown = set(options.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"--only: no scenario named {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    size = SHORT if options.size == "short" else FULL
    ledger = RedisServer(workdir / "ledger")
    (workdir / "ledger").mkdir()
    ledger.start()
    outcomes = []
    began = time.monotonic()
    try:
        db.create()
        db.migrate()
        env = Env(workdir, ledger.url, db, size)
        for name, scenario in SCENARIOS.items():
            if options.only and name not in options.only:
                continue
            print(f"== {name} ({size.name})", flush=True)
            outcome = scenario(env)
            print(HEADER + "\n" + outcome.row(), flush=True)
            for problem in outcome.problems:
                print(f"   FAILED: {problem}", flush=True)
            outcomes.append(outcome)
    finally:
        ledger.stop()
        db.drop()
    print(f"\nThe fault suite ({size.name}, database: {db.kind}), {time.monotonic() - began:.0f} s:\n")
    print(HEADER)
    for outcome in outcomes:
        print(outcome.row())
    failed = [o for o in outcomes if not o.ok]
    if failed or options.keep:
        print(f"\nworking directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
