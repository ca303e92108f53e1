"""Kubernetes quantities (``100m``, ``0.5``, ``128Mi``): the one parser of the operator's settings and
of its comparison of objects (the API server rewrites quantities canonically: ``1000m`` comes back
as ``1``). Pure and exact (fractions); the suffixes are those resource requests use."""

from __future__ import annotations

import re
from fractions import Fraction

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_SUFFIX = {
    None: Fraction(1),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
}


def quantity(text: str) -> Fraction | None:
    """The value of a Kubernetes quantity, or None if ``text`` is not one."""
    m = _QUANTITY.match(text)
    if not m:
        return None
    return Fraction(m.group(1)) * _SUFFIX[m.group(2)]
