"""Stage 6: hyperparameter grids, training them and ranking the results."""
