"""Summarize py-spy's collapsed stacks: where the samples were, by function.

    python benchmarks/profile_report.py PROFILE.txt [--top 40] [--match extmsg]

``self``: samples whose innermost frame is the function; ``total``: samples with the function
anywhere on the stack (counted once per sample).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    where = m.group("file")
    for marker in ("site-packages/", "/core/", "/plugins/", "/lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({where})"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="only functions whose name contains this")
    parser.add_argument(
        "--all-threads",
        action="store_true",
        help="count aiosqlite's worker threads too (default: the event loop's)",
    )
    args = parser.parse_args(argv)
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        if not args.all_threads and "_connection_worker_thread" in stack:
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n
    print(f"{samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"\n-- by {title} --")
        shown = 0
        for name, n in counter.most_common():
            if args.match and args.match not in name:
                continue
            print(f"{n / samples * 100:6.1f}%  {name}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main(sys.argv[1:])
