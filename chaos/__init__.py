"""The fault suite: real ``runworker`` processes, their own redis-servers and a real database,
put through kill -9, Redis crashes and freezes, a database outage and crafted payloads.

``make chaos`` (or ``python -m chaos``) runs every scenario at full size; ``make chaos
CHAOS=short`` the smaller version CI runs. See docs/reliability.md, "The fault suite".
"""
