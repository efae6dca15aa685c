"""llmcredits: prepaid credits and per-token metering for OpenAI-compatible LLM APIs."""

__version__ = "0.1.0"
