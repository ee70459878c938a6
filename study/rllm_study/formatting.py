"""Number formatting shared by tables in the CLI and in reports."""

from __future__ import annotations


def num(v: float | None) -> str:
    """A number with about three significant digits; '-' for None."""
    if v is None:
        return "-"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def pct(v: float | None) -> str:
    """A fraction as a percentage with one decimal; '-' for None."""
    return "-" if v is None else f"{100 * v:.1f}%"


def proportion(v: float | None, k: int | None, n: int | None, ci: list[float] | None, sep: str = " ") -> str:
    """A proportion with its counts and 95% interval, e.g. '25.0% (2/8) [7.1-59.1%]'; `sep` goes
    before the interval (a newline stacks it in narrow tables); '-' for None."""
    if v is None:
        return "-"
    interval = f"{sep}[{100 * ci[0]:.1f}-{100 * ci[1]:.1f}%]" if ci else ""
    return f"{pct(v)} ({k}/{n}){interval}"
