"""Start-up cost: ``import torch``, ``import vivit``, ``import vivit, timm`` and ``vivit --help``, each in a fresh
interpreter, interleaved (every repetition runs every command once in turn, so a busy machine slows them alike).

Prints the median wall-clock seconds of each and its ratio to ``import torch``, with the CPU. Python's own start-up
is in every number. Usage: ``python benchmarks/startup.py [--repeats 5] [--json out.jsonl]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import vivit": [sys.executable, "-c", "import vivit"],
    "import vivit, timm": [sys.executable, "-c", "import vivit, timm"],
    "vivit --help": [sys.executable, "-m", "vivit", "--help"],
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="append one JSON line with the medians")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"CPU: {cpu_name()}; {args.repeats} interleaved repetitions, median seconds")
    for name, median in medians.items():
        print(f"{name:20s} {median:7.2f} s  {median / medians['import torch']:5.2f}x import torch")
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps({"cpu": cpu_name(), "repeats": args.repeats, "seconds": medians}) + "\n")


if __name__ == "__main__":
    main()
