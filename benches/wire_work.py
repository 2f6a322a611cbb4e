#!/usr/bin/env python3
"""Workload helpers of benches/wire.sh (random rewrites, log appends).

Deterministic for a given seed, so every --cp-sync round does the same work.

    wire_work.py rewrite FILE COUNT SIZE ALIGN SEED
        COUNT writes of SIZE bytes at random offsets that are multiples of
        ALIGN (1 = unaligned) inside FILE's current size, random contents.
    wire_work.py logs DIR FILES LINES FSYNC_EVERY SEED
        LINES lines of 1 KiB appended round-robin to FILES files in DIR
        (created if absent); every FSYNC_EVERY lines, every file is fsync'ed.
"""

import os
import random
import sys

LINE_BYTES = 1024


def rewrite(path, count, size, align, seed):
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        length = os.fstat(fd).st_size
        slots = (length - size) // align + 1
        for _ in range(count):
            off = rng.randrange(slots) * align
            os.pwrite(fd, rng.randbytes(size), off)
    finally:
        os.close(fd)


def logs(directory, files, lines, fsync_every, seed):
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    fds = [
        os.open(os.path.join(directory, f"app{i:03}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for i in range(files)
    ]
    alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 "
    printable = bytes(alphabet[i % len(alphabet)] for i in range(256))
    try:
        for n in range(lines):
            head = b"%08d %016x " % (n, rng.getrandbits(64))
            body = rng.randbytes(LINE_BYTES - len(head) - 1).translate(printable)
            os.write(fds[n % files], head + body + b"\n")
            if (n + 1) % fsync_every == 0:
                for fd in fds:
                    os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def main(argv):
    if len(argv) == 7 and argv[1] == "rewrite":
        rewrite(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
    elif len(argv) == 7 and argv[1] == "logs":
        logs(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
