"""Stage 1 of the pipeline: the data a fine-tune reads (export, registration, augmentation)."""
