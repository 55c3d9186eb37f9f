"""FORMAT-style placeholders (`ParamStyle.FORMAT`: `%s`, a literal `%` written `%%`)
rewritten into a driver's own spelling, for drivers that bind on the server."""

from __future__ import annotations

import re
from collections.abc import Callable

from fabric.errors import InvalidArgument

_FORMAT_MARK = re.compile(r"%(.|\Z)", re.DOTALL)


def rewrite_format_placeholders(sql: str, values: int, placeholder: Callable[[int], str]) -> str:
    """FORMAT-style text in a driver's own spelling: `%%` becomes `%` and the n-th `%s`
    (from 1) becomes `placeholder(n)`. InvalidArgument for any other `%`, or when the
    number of placeholders is not `values`."""
    seen = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal seen
        follower = match.group(1)
        if follower == "%":
            return "%"
        if follower == "s":
            seen += 1
            return placeholder(seen)
        raise InvalidArgument("the statement has a stray '%'; a literal % must be written %%")

    text = _FORMAT_MARK.sub(replace, sql)
    if seen != values:
        raise InvalidArgument(
            f"the statement has {seen} placeholder(s) but {values} value(s) were given; "
            "pass one value per placeholder"
        )
    return text
