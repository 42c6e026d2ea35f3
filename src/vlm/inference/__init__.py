"""Stage 3: predictions (LLaMA-Factory's do_predict, transformers, vLLM), the store, answer parsing."""
