#!/usr/bin/env python3
"""Where a run's CPU goes: per-process CPU and context switches per message.

On a small box the durable path is bounded by CPU, not by any one hop, so
the useful question is what each component costs per message. Two steps:

  cpu_budget.py sample OUT.jsonl NAME...   (until SIGTERM/SIGINT)
      every 0.5 s appends one line: the time, and for each process name
      (the kernel's 15-character `comm`, e.g. beam.smp, postgres,
      chatflow-consum) the CPU seconds (user + system) and context
      switches (voluntary + involuntary) summed over every thread of
      every process of that name (threads that ended keep their CPU but
      lose their switches).
  cpu_budget.py report OUT.jsonl --from T0 --to T1 --messages N
                [--phase TEXT] [--json F]
      over the samples nearest inside [T0, T1] (Unix seconds): cores used,
      µs of CPU per message and context switches per message, by name,
      and their total, headed "cpu budget over S s of TEXT" (default "the
      main phase"). A window with fewer than two samples (T1 <= T0, say)
      is reported as such, exit 1.

Processes that start or exit inside the window are counted only while
both ends see them (a backend that exits takes its CPU with it), so keep
the window to a steady phase.
"""

import argparse
import json
import os
import signal
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path):
    """utime + stime from a /proc stat file (fields 14 and 15 of the line)."""
    with open(stat_path) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def process_totals(names):
    """{name: [cpu seconds, context switches]} over every process of each name.

    CPU is the process's own (it keeps the time of threads that have
    ended); context switches are summed over its live threads, so those of
    a thread that ended are lost.
    """
    totals = {name: [0.0, 0] for name in names}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().rstrip("\n")
            if comm not in totals:
                continue
            cpu = cpu_seconds(f"/proc/{pid}/stat")
            tasks = os.listdir(f"/proc/{pid}/task")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while being read
        switches = 0
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
            except (OSError, IndexError, ValueError):
                continue  # the thread ended between listing and reading
        totals[comm][0] += cpu
        totals[comm][1] += switches
    return totals


def sample(path, names):
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    with open(path, "a") as out:
        while not stop:
            line = {"t": time.time(), "processes": process_totals(names)}
            out.write(json.dumps(line) + "\n")
            out.flush()
            time.sleep(0.5)


def report(path, t0, t1, messages, phase, json_path):
    samples = []
    with open(path) as f:
        for line in f:
            try:
                samples.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut short by the sampler's stop
    inside = [s for s in samples if t0 <= s["t"] <= t1]
    if len(inside) < 2 or messages <= 0:
        print(f"cpu budget: no steady window (samples {len(inside)} in [{t0:.1f}, {t1:.1f}], messages {messages})")
        return 1
    first, last = inside[0], inside[-1]
    seconds = last["t"] - first["t"]
    # Messages in the sampled part of the window, at the window's mean rate.
    counted = messages * seconds / (t1 - t0)
    rows = []
    for name, (cpu1, switches1) in last["processes"].items():
        cpu0, switches0 = first["processes"].get(name, [cpu1, switches1])
        cpu, switches = cpu1 - cpu0, switches1 - switches0
        rows.append({
            "name": name,
            "cores": cpu / seconds,
            "cpuMicrosPerMessage": cpu / counted * 1e6,
            "switchesPerMessage": switches / counted,
        })
    total = {
        "name": "total",
        "cores": sum(r["cores"] for r in rows),
        "cpuMicrosPerMessage": sum(r["cpuMicrosPerMessage"] for r in rows),
        "switchesPerMessage": sum(r["switchesPerMessage"] for r in rows),
    }
    print(f"cpu budget over {seconds:.1f} s of {phase} ({counted / seconds:,.0f} msgs/s):")
    print(f"  {'process':<16} {'cores':>6} {'µs CPU/msg':>11} {'switches/msg':>13}")
    for r in sorted(rows, key=lambda r: -r["cores"]) + [total]:
        print(f"  {r['name']:<16} {r['cores']:>6.2f} {r['cpuMicrosPerMessage']:>11.1f} {r['switchesPerMessage']:>13.1f}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"seconds": seconds, "messagesPerSecond": counted / seconds,
                       "processes": rows, "total": total}, f, indent=2)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("out")
    s.add_argument("names", nargs="+")
    r = sub.add_parser("report")
    r.add_argument("out")
    r.add_argument("--from", dest="t0", type=float, required=True)
    r.add_argument("--to", dest="t1", type=float, required=True)
    r.add_argument("--messages", type=float, required=True)
    r.add_argument("--phase", default="the main phase")
    r.add_argument("--json")
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.out, args.names)
        return 0
    return report(args.out, args.t0, args.t1, args.messages, args.phase, args.json)


if __name__ == "__main__":
    sys.exit(main())
