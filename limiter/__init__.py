"""fleet-limiter: rate limits and fair shares for fleets of LLM workers."""

__version__ = "0.1.0"
