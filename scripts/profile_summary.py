"""Summarise a py-spy raw profile (`py-spy record -f raw`): the frames with the largest share of
samples, inclusive (the frame anywhere on the stack) and self (the frame on top).

Usage: python scripts/profile_summary.py PROFILE.txt [--top N] [--thread SUBSTRING] [--within SUBSTRING] [--functions]
A line of the raw format is `frame;frame;...;frame COUNT`, outermost first (a line of a
COUNT alone, samples with no Python frame, is skipped); with py-spy's
--threads the first frame names the thread, which --thread filters on. --within keeps only the
stacks with a frame containing SUBSTRING (e.g. `LlamaCppEngine.step`: shares of a decode step);
--functions counts a function's lines as one frame (py-spy names each frame `function (file:line)`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter


def summarise(path: str, top: int, thread: str | None, within: str | None = None, functions: bool = False) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack.strip() and count.isdigit():  # samples with no Python frame
                continue
            if not stack or not count.isdigit():
                raise ValueError(
                    f"{path}: line {number} is not `frame;...;frame COUNT`; pass the output of `py-spy record -f raw`"
                )
            frames = stack.split(";")
            if functions:
                frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
            if (thread and thread not in frames[0]) or (within and not any(within in f for f in frames)):
                continue
            n = int(count)
            total += n
            self_time[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    lines = [
        f"{path}: {total} samples"
        + (f" in threads matching {thread!r}" if thread else "")
        + (f" in stacks through {within!r}" if within else "")
    ]
    for title, counter in (("inclusive", inclusive), ("self", self_time)):
        lines.append(f"-- {title}")
        lines += [f"{100 * c / max(total, 1):5.1f}%  {frame[:160]}" for frame, c in counter.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--thread", default=None)
    parser.add_argument("--within", default=None)
    parser.add_argument("--functions", action="store_true")
    args = parser.parse_args()
    try:
        print(summarise(args.profile, args.top, args.thread, args.within, args.functions))
    except (OSError, ValueError) as err:  # a bad path or file: one line, exit 2
        print(f"{args.profile}: {err.strerror}" if isinstance(err, OSError) else err, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
