"""HTTP: the toolkit every route uses (JSON errors, bodies, bearer tokens), the lease and credit
routes, metrics exposition."""
