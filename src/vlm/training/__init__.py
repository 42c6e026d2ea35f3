"""Stage 2: the recipe, its validation and token budget, training runs, checkpoints, merging."""
