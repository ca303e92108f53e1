// The OCI runtime wrapper of tools/kind (README there): standard library only.
module fleetlimiter.local/kind/runcwrapper

go 1.22
