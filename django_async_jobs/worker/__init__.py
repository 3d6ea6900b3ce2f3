"""The worker runtime: one launcher per process, a supervisor above several of them."""
