"""Telephone numbers in any spelling, brought to one form before they are looked up.

Pure rules, no I/O. A number reaches sipd as a ``tel:`` URI (RFC 3966), as
the user part of a ``sip:`` URI with ``user=phone`` or as a plain user
part of digits; with or without ``+``, with the national prefix, and with
RFC 3966's visual separators. :meth:`NumberPlan.normalise` turns each into
one form:

1. Visual separators go: ``-``, ``.``, ``(``, ``)`` and spaces (``%20``
   in a URI, unescaped before this).
2. What is left must be a number: an optional leading ``+``, then digits,
   ``*`` and ``#`` (at least one digit). Anything else is not a number.
3. ``+`` and digits is a global number and stays as it is.
4. A number that starts with ``international_prefix`` (``00``, ``011``)
   is global: the prefix becomes ``+``.
5. A number that starts with ``national_prefix`` (``0``), when
   ``country_code`` is set, is national: the prefix becomes ``+`` and the
   country code.
6. Anything else (an extension, a short number) stays as it is.

A ``tel:`` URI's ``phone-context`` that is a global number prefix
(``tel:1727221221;phone-context=+49``) is put in front of a local number.
With no keys set (the default) only the separators go, so ``+49 1727
221221`` and ``01727221221`` stay different numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["NumberPlan", "SEPARATORS"]

#: RFC 3966 §3 visual separators, and the space people type.
SEPARATORS = "-.() "
_STRIP = str.maketrans("", "", SEPARATORS)
_NUMBER = re.compile(r"\+?[0-9*#]*[0-9][0-9*#]*")
_DIGITS = re.compile(r"[0-9]*")


def _digits(name: str, value: str) -> str:
    if _DIGITS.fullmatch(value) is None or len(value) > 8:
        raise ValueError(f"{name} must be up to 8 digits, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class NumberPlan:
    """How this server's numbers are written: the country and the dialling prefixes."""

    country_code: str = ""
    """The country's calling code, digits without ``+`` (``49``); empty: unknown."""
    national_prefix: str = ""
    """The trunk prefix of national numbers (``0``); empty: none."""
    international_prefix: str = ""
    """The prefix of international numbers (``00``); empty: only ``+`` marks them."""

    def __post_init__(self) -> None:
        _digits("country_code", self.country_code)
        _digits("national_prefix", self.national_prefix)
        _digits("international_prefix", self.international_prefix)

    def normalise(self, text: str, phone_context: str | None = None) -> str | None:
        """``text`` in the one form of the module's rules, or None if it is not a number."""
        number = text.translate(_STRIP)
        if _NUMBER.fullmatch(number) is None:
            return None
        if number.startswith("+"):
            return number
        if phone_context:
            context = phone_context.translate(_STRIP)
            if context.startswith("+") and _NUMBER.fullmatch(context):
                return context + number
        intl = self.international_prefix
        if intl and number.startswith(intl) and len(number) > len(intl):
            return "+" + number[len(intl):]
        national = self.national_prefix
        if (self.country_code and national and number.startswith(national)
                and len(number) > len(national)):
            return "+" + self.country_code + number[len(national):]
        return number
