"""The LLM proxy: wire formats, upstreams, per-model queues, key charging, its routes."""
