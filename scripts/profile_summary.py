"""Summarise a py-spy raw profile (`py-spy record -f raw`): the frames with the largest share of
samples, inclusive (the frame anywhere on the stack) and self (the frame on top).

Usage: python scripts/profile_summary.py PROFILE.txt [--top N] [--thread SUBSTRING]
A line of the raw format is `frame;frame;...;frame COUNT`, outermost first; with py-spy's
--threads the first frame names the thread, which --thread filters on.
"""

from __future__ import annotations

import argparse
from collections import Counter


def summarise(path: str, top: int, thread: str | None) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")
            if thread and thread not in frames[0]:
                continue
            n = int(count)
            total += n
            self_time[frames[-1]] += n
            for frame in set(frames):
                inclusive[frame] += n
    lines = [f"{path}: {total} samples" + (f" in threads matching {thread!r}" if thread else "")]
    for title, counter in (("inclusive", inclusive), ("self", self_time)):
        lines.append(f"-- {title}")
        lines += [f"{100 * c / max(total, 1):5.1f}%  {frame[:160]}" for frame, c in counter.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--thread", default=None)
    args = parser.parse_args()
    print(summarise(args.profile, args.top, args.thread))


if __name__ == "__main__":
    main()
