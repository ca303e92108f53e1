"""The instance runtime: membership, grants, leases (a limiter instance following its fleet through Redis)."""
