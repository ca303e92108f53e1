"""The fleet-limiter Kubernetes operator (kopf), importable as ``limiter_operator``.

The folder is named ``operator/`` but the standard library owns that module name, so the
package is installed under ``limiter_operator`` (see ``[tool.setuptools] package-dir``).
"""
