"""The pure core: the policy, the allocation, admission, window budgets, the credit model, the clock.

No I/O here: no Redis, no HTTP, no asyncio (import-linter checks it, see docs/architecture.md)."""
