"""selectlab: choose the instruction-response examples worth fine-tuning on, and prove it."""

__version__ = "0.1.0"
