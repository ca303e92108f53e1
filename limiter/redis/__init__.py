"""Redis: key names, the one plumbing module (script loading, the client, the retry policy), the
fleet and credit stores, and their Lua scripts in ``lua/``."""
