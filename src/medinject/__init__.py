"""medinject: data-provenance ablations for LLM instruction tuning."""

__version__ = "0.1.0"
