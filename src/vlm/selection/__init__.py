"""Stage 5: scoring and ranking a run's checkpoints."""
