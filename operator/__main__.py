"""``python -P -m limiter_operator`` runs the operator (see :mod:`limiter_operator.main`)."""

from .main import main

main()
