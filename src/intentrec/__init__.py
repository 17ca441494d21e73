"""intentrec: LLM-enhanced session-based recommendation, measured honestly."""

__version__ = "0.1.0"
