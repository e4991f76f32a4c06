"""What the benchmark scripts share at their end: a median [min, max] cell and the report written where the
README quotes it (and printed)."""

from __future__ import annotations

import os
import statistics


def spread(values, fmt: str = "{:.3f}") -> str:
    """median [min, max] of values; the median alone for one value."""
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def publish(lines: list[str], path: str) -> str:
    """Print the report and write it to path (its folder made as needed); returns the text."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return text
