"""vramgate: one OpenAI-compatible endpoint for many LLM engines, started on demand."""

__version__ = "0.1.0"
