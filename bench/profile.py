"""Where a loaded node spends its CPU: py-spy on each node process during the benchmark.

Run it with ``python -m bench.profile [--commands N] [--seconds S] [--out DIR]``. It
starts ``python -m bench.throughput --split --skip-raw`` (the node as two processes,
commands and events), attaches ``py-spy record`` to each node process once both serve,
for ``--seconds``, and prints per process the functions with the most samples: by own
time, and by time including callees (Staybook's own modules only). The raw stacks
(``<role>.txt``, collapsed: ``flamegraph.pl`` or speedscope draw them) are left in
``--out``.

py-spy samples only the thread holding the GIL (``--gil``), so waiting (for the
broker, the disk, a lock or the GIL) does not count: the shares are of Python's CPU. It pauses the
process to sample, which slows it down; compare shares between runs, not rates.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

OWN = re.compile(r"\((actors|node|store|broker|messages|rules|console|config)/|\(supervisor\.py")


def _frame(raw: str) -> str:
    """``func (path:line)`` shortened to ``func (pkg/module.py)``."""
    m = re.match(r"(.*) \((.*?)(?::\d+)?\)$", raw)
    if not m:
        return raw
    fn, path = m.groups()
    for pattern in (r".*/site-packages/", r".*/lib/python3\.\d+/", r".*/(?=(actors|node|store|"
                    r"broker|messages|rules|console|config|bench)/)"):
        path = re.sub(pattern, "", path)
    path = re.sub(r".*/(supervisor\.py)$", r"\1", path)
    return f"{fn} ({path})"


def top(collapsed: Path, n: int = 20) -> str:
    """The busiest functions of one py-spy ``raw`` (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            if OWN.search(f):
                incl[f] += k
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples", "  own time:"]
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in own.most_common(n)]
    lines.append("  including callees (Staybook's modules):")
    lines += [f"    {c * 100 / total:5.1f}%  {f}" for f, c in incl.most_common(n)]
    return "\n".join(lines)


def _node_pids(parent: int) -> dict[str, int]:
    """The ``staybook serve`` processes under ``parent``, by role."""
    found: dict[str, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" not in cmd or f"BENCH_PROFILE_PARENT={parent}".encode() not in env:
            continue
        roles = next((e for e in env if e.startswith(b"STAYBOOK_ROLES=")), b"")
        role = re.sub(rb"[^a-z,]", b"", roles.split(b"=", 1)[-1]).decode() or "node"
        found[role] = int(d)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark under py-spy and print the tables; the benchmark's exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--commands", type=int, default=12_000)
    p.add_argument("--seconds", type=int, default=20, help="how long py-spy samples")
    p.add_argument("--delay", type=float, default=3.0,
                   help="seconds after the nodes serve before sampling starts")
    p.add_argument("--out", type=Path, default=Path("profile-out"),
                   help="where the collapsed stacks go")
    p.add_argument("--rate", type=int, default=100, help="samples per second")
    p.add_argument("--paced", type=int, default=None,
                   help="profile a paced run at this many commands/s instead of saturation "
                        "(a short saturation run comes first: sampling starts --delay "
                        "seconds after the nodes serve, so give it ~10)")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("bench.profile: py-spy is not installed (pip install py-spy)")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BENCH_PROFILE_PARENT": str(os.getpid())}
    run = (["--commands", "400", "--paced", str(args.paced),
            "--paced-seconds", str(args.seconds + args.delay + 5)] if args.paced
           else ["--commands", str(args.commands), "--paced", ""])
    bench = subprocess.Popen([sys.executable, "-m", "bench.throughput", "--split", "--skip-raw",
                              *run], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: dict[str, int] = {}
    limit = time.monotonic() + 180
    while len(pids) < 2 and bench.poll() is None and time.monotonic() < limit:
        time.sleep(0.3)
        pids = _node_pids(os.getpid())
    time.sleep(args.delay)
    spies = {role: subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(args.seconds), "-r", str(args.rate),
         "--gil", "-f", "raw", "-o", str(args.out / f"{role}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for role, pid in pids.items()}
    for s in spies.values():
        s.wait()
    out, _ = bench.communicate()
    print(out)
    for role in spies:
        collapsed = args.out / f"{role}.txt"
        print(f"py-spy, {role} process ({args.seconds} s at {args.rate}/s):")
        print(top(collapsed) if collapsed.exists() else "  (py-spy wrote nothing)")
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
