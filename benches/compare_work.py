#!/usr/bin/env python3
"""Workload helpers of benches/compare.sh (timed writers, fsync loop, ...).

    compare_work.py stream PATH TOTAL_MB SRC [--file-mb N] [--lat OUT] [--shift B]
        Writes TOTAL_MB MiB with 1 MiB write() calls, taking the bytes from
        SRC (a file of random bytes, read into memory once). Every pass over
        SRC starts at another offset that is not a multiple of 4 KiB, so no
        4 KiB block repeats. With --file-mb, the data is split into files
        PATH.0, PATH.1, ... of N MiB each; otherwise it all goes to PATH.
        With --lat, every write() is timed (CLOCK_MONOTONIC) and OUT gets
        one latency in nanoseconds per line. --shift B moves every offset
        into SRC by B bytes (another B, other contents). Prints a JSON
        summary.
    compare_work.py fsync PATH COUNT
        COUNT times: a 4 KiB pwrite (appending) followed by fsync, each pair
        timed. Prints a JSON summary.
    compare_work.py randwrite PATH SIZE_MB SECONDS
        Stand-in for fio: 4 KiB random pwrites inside a SIZE_MB file (laid
        out first, outside the measurement), fsync every 16 writes, for
        SECONDS. Prints a JSON summary with "iops".
    compare_work.py netcopy SRC DST
        Copies SRC to DST through a TCP connection on 127.0.0.1 (1 MiB
        reads and writes, fsync of DST at the end). Prints a JSON summary
        with "mib_s".
    compare_work.py rtt COUNT
        COUNT round trips of 64 bytes over a TCP connection on 127.0.0.1 to
        an echo server in another process, each timed. Prints a JSON
        summary.
    compare_work.py lat OUT
        Summarises a file of latencies in nanoseconds (one per line).
    compare_work.py jget KEY... < JSON
        Prints the fields (dotted paths, e.g. bytes.wire_total) of the JSON
        object on stdin, one per line ("null" for a missing one).
    compare_work.py flood PORT COUNT SECONDS STOPFILE
        Keeps COUNT idle TCP connections to 127.0.0.1:PORT open (a tenth of
        them send one byte a second), reopening each one the other side
        closes, for SECONDS or until STOPFILE exists. Prints a JSON summary
        with "opened" (connections made).
    compare_work.py sswire PORT...
        Sum of bytes_sent over all TCP sockets (from `ss -tinH`) whose local
        or remote port is one of PORT: every byte between a client and these
        ports counted once, both directions together.
"""

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

MIB = 1 << 20


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def summary_ns(lat_ns):
    v = sorted(lat_ns)
    ms = lambda ns: round(ns / 1e6, 3)  # noqa: E731
    return {
        "count": len(v),
        "p50_ms": ms(percentile(v, 50)),
        "p99_ms": ms(percentile(v, 99)),
        "p999_ms": ms(percentile(v, 99.9)),
        "max_ms": ms(v[-1] if v else 0),
        "mean_ms": ms(sum(v) / len(v) if v else 0),
    }


def stream(path, total_mb, src, file_mb=None, lat_out=None, shift=0):
    with open(src, "rb") as f:
        data = f.read()
    size = len(data) - len(data) % MIB
    if size < MIB:
        raise SystemExit("stream: source is smaller than 1 MiB")
    data = data[:size] + data[:MIB]  # wrap-around without copying per write
    mv = memoryview(data)
    per_pass = size // MIB
    lat = [] if lat_out else None
    fd = None
    t_start = time.monotonic_ns()
    for i in range(total_mb):
        if file_mb:
            if i % file_mb == 0:
                if fd is not None:
                    os.close(fd)
                fd = os.open(f"{path}.{i // file_mb}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        elif fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pas, j = divmod(i, per_pass)
        off = (j * MIB + pas * 1000 + shift) % size
        chunk = mv[off:off + MIB]
        if lat is not None:
            t0 = time.monotonic_ns()
            n = os.write(fd, chunk)
            lat.append(time.monotonic_ns() - t0)
        else:
            n = os.write(fd, chunk)
        if n != MIB:
            raise SystemExit(f"stream: short write ({n} bytes)")
    if fd is not None:
        os.close(fd)
    secs = (time.monotonic_ns() - t_start) / 1e9
    out = {"mib": total_mb, "seconds": round(secs, 3), "mib_s": round(total_mb / secs, 1)}
    if lat is not None:
        with open(lat_out, "w") as f:
            f.write("\n".join(map(str, lat)) + "\n")
        out.update(summary_ns(lat))
    print(json.dumps(out))


def fsync_loop(path, count):
    rng = random.Random(11)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    lat = []
    t_start = time.monotonic_ns()
    try:
        for i in range(count):
            buf = rng.randbytes(4096)
            t0 = time.monotonic_ns()
            os.pwrite(fd, buf, i * 4096)
            os.fsync(fd)
            lat.append(time.monotonic_ns() - t0)
    finally:
        os.close(fd)
    secs = (time.monotonic_ns() - t_start) / 1e9
    out = summary_ns(lat)
    out["ops_s"] = round(count / secs, 1)
    print(json.dumps(out))


def randwrite(path, size_mb, seconds):
    rng = random.Random(13)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        block = rng.randbytes(MIB)
        for i in range(size_mb):
            os.pwrite(fd, block, i * MIB)
        os.fsync(fd)
        slots = size_mb * 256
        pool = [rng.randbytes(4096) for _ in range(64)]
        n = 0
        t0 = time.monotonic()
        deadline = t0 + seconds
        while True:
            os.pwrite(fd, pool[n % 64], rng.randrange(slots) * 4096)
            n += 1
            if n % 16 == 0:
                os.fsync(fd)
                if time.monotonic() >= deadline:
                    break
        secs = time.monotonic() - t0
    finally:
        os.close(fd)
    print(json.dumps({"writes": n, "seconds": round(secs, 3), "iops": round(n / secs, 1)}))


def netcopy(src, dst):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    result = {}

    def receive():
        conn, _ = srv.accept()
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        total = 0
        try:
            while True:
                b = conn.recv(MIB)
                if not b:
                    break
                view = memoryview(b)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                total += len(b)
            os.fsync(fd)
        finally:
            os.close(fd)
            conn.close()
        result["bytes"] = total

    t = threading.Thread(target=receive)
    t.start()
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as c, open(src, "rb") as f:
        while True:
            b = f.read(MIB)
            if not b:
                break
            c.sendall(b)
    t.join()
    secs = time.monotonic() - t0
    srv.close()
    mib = result["bytes"] / MIB
    print(json.dumps({"mib": round(mib, 1), "seconds": round(secs, 3), "mib_s": round(mib / secs, 1)}))


def rtt(count):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    pid = os.fork()
    if pid == 0:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            b = conn.recv(64)
            if not b:
                os._exit(0)
            conn.sendall(b)
    srv.close()
    lat = []
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * 64
        for _ in range(count):
            t0 = time.monotonic_ns()
            c.sendall(msg)
            got = 0
            while got < len(msg):
                got += len(c.recv(64))
            lat.append(time.monotonic_ns() - t0)
    os.waitpid(pid, 0)
    print(json.dumps(summary_ns(lat)))


def lat_file(path):
    with open(path) as f:
        v = [int(float(x)) for x in f if x.strip()]
    print(json.dumps(summary_ns(v)))


def jget(keys):
    obj = json.load(sys.stdin)
    for k in keys:
        v = obj
        for part in k.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, bool):
            print("true" if v else "false")
        elif v is None:
            print("null")
        else:
            print(v)


def sswire(ports):
    ports = {int(p) for p in ports}
    out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True, check=True).stdout
    total = 0
    match = False
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            fields = line.split()
            match = False
            if len(fields) >= 5:
                for addr in fields[3:5]:
                    try:
                        if int(addr.rsplit(":", 1)[1]) in ports:
                            match = True
                    except (IndexError, ValueError):
                        pass
            # with -H, ss may put the info on the same line
            line = " ".join(fields[5:])
        if match:
            for tok in line.split():
                if tok.startswith("bytes_sent:"):
                    total += int(tok.split(":", 1)[1])
    print(total)


def flood(port, count, seconds, stopfile):
    deadline = time.monotonic() + seconds
    opened = 0

    def open_one():
        nonlocal opened
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
            s.setblocking(False)
            opened += 1
            return s
        except OSError:
            return None

    conns = [open_one() for _ in range(count)]
    last_dribble = time.monotonic()
    while time.monotonic() < deadline and not os.path.exists(stopfile):
        dribble = time.monotonic() - last_dribble >= 1
        if dribble:
            last_dribble = time.monotonic()
        for i, s in enumerate(conns):
            alive = s is not None
            if alive:
                try:
                    alive = len(s.recv(256)) > 0
                except BlockingIOError:
                    pass
                except OSError:
                    alive = False
            if alive and dribble and i % 10 == 0:
                try:
                    s.send(b"\0")
                except OSError:
                    alive = False
            if not alive:
                if s is not None:
                    s.close()
                conns[i] = open_one()
        time.sleep(0.05)
    for s in conns:
        if s is not None:
            s.close()
    print(json.dumps({"opened": opened}))


def main(argv):
    args = argv[1:]
    if not args:
        sys.stderr.write(__doc__)
        return 2
    cmd = args[0]
    if cmd == "stream" and len(args) >= 4:
        opts = args[4:]
        file_mb = lat_out = None
        shift = 0
        while opts:
            if opts[0] == "--file-mb" and len(opts) >= 2:
                file_mb = int(opts[1])
            elif opts[0] == "--lat" and len(opts) >= 2:
                lat_out = opts[1]
            elif opts[0] == "--shift" and len(opts) >= 2:
                shift = int(opts[1])
            else:
                sys.stderr.write(__doc__)
                return 2
            opts = opts[2:]
        stream(args[1], int(args[2]), args[3], file_mb, lat_out, shift)
    elif cmd == "fsync" and len(args) == 3:
        fsync_loop(args[1], int(args[2]))
    elif cmd == "randwrite" and len(args) == 4:
        randwrite(args[1], int(args[2]), float(args[3]))
    elif cmd == "netcopy" and len(args) == 3:
        netcopy(args[1], args[2])
    elif cmd == "rtt" and len(args) == 2:
        rtt(int(args[1]))
    elif cmd == "lat" and len(args) == 2:
        lat_file(args[1])
    elif cmd == "jget":
        jget(args[1:])
    elif cmd == "flood" and len(args) == 5:
        flood(int(args[1]), int(args[2]), float(args[3]), args[4])
    elif cmd == "sswire" and len(args) >= 2:
        sswire(args[1:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
