"""Stage 4: scoring predictions (Donut's nTED and field F1, QA), trust checks, reports."""
