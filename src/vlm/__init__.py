"""vlm: fine-tune VLMs for document extraction with LLaMA-Factory."""
__version__ = "0.1.0"
