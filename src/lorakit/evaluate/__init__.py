"""Evaluation stage: metrics (pure functions), base-versus-adapters comparison, performance benchmark."""
