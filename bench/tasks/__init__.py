"""The bench job, declared the way each peer system expects (imported by its workers)."""
