#!/usr/bin/env python3
"""`make bench`: every benchmark in turn, then one table of figures, targets and PASS/MISS.

    .venv/bin/python bench/run.py [--quick] [--out DIR] [--only NAME,...]

Each benchmark runs with its defaults (``--quick`` is passed to those that
take it: shorter steps, one round), its output shown as it runs and kept
in ``DIR/NAME.out``; those that write a ``results.json`` get
``--out DIR/NAME``. The table at the end takes the figures the issue's
targets name from those files: every speed figure a ratio to Kamailio
measured in the same run (``sipd/kam`` for rates, ``kam/sipd`` for CPU
per operation, so higher is better in both), memory per binding after a
burst, restart time; benchmarks that print their own PASS/MISS lines
(fuse_bench) have those lines copied. It is also written to
``DIR/table.txt`` and ``DIR/table.json``. A figure a benchmark did not
produce (missing tool, no Kamailio) is ``-`` and counts as neither.
Never fails a build: the exit status is 0 whatever was missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Where make compiled unpacks the wheel make install would build.
COMPILED = HERE.parent / "build" / "compiled" / "site"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    #: Takes --out DIR and writes DIR/results.json.
    results: bool = False
    #: Takes --out DIR for its raw output only (no results.json).
    raw_out: bool = False
    quick: bool = False
    #: What --quick passes instead of --quick.
    quick_args: tuple[str, ...] = ()


BENCHES = (
    Bench("parse", "bench_parse.py"),
    Bench("options", "options_rate.py", raw_out=True),
    Bench("location", "location_memory.py"),
    Bench("registrar", "registrar_bench.py", results=True, quick=True),
    # The 100k burst alone when quick: the target's size (its fill takes 500 s).
    Bench("burst", "burst_memory.py", results=True, quick_args=("--sizes", "100000",
                                                                 "--devices", "10")),
    Bench("scaling", "scaling_bench.py", results=True, quick=True),
    Bench("fuse", "fuse_bench.py"),
    Bench("calls", "call_bench.py", results=True, quick=True),
)


@dataclass
class Figure:
    label: str
    value: float | None
    target: str
    passed: bool | None
    unit: str = ""

    def cells(self) -> tuple[str, str, str, str]:
        value = "-" if self.value is None else f"{self.value:,.2f}".rstrip("0").rstrip(".")
        verdict = "-" if self.passed is None else ("PASS" if self.passed else "MISS")
        return self.label, f"{value}{self.unit and ' ' + self.unit}", self.target, verdict


def _mean(values: Sequence[Any]) -> float | None:
    found = [float(v) for v in values if isinstance(v, (int, float))]
    return statistics.fmean(found) if found else None


def _rows(rows: Sequence[dict[str, Any]], target: str, mode: str) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("target") == target and r.get("mode") == mode]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _at_least(label: str, value: float | None, target: float, unit: str = "") -> Figure:
    return Figure(label, value, f">= {target:g}{unit and ' ' + unit}",
                  None if value is None else value >= target, unit)


def _at_most(label: str, value: float | None, target: float, unit: str = "") -> Figure:
    return Figure(label, value, f"<= {target:g}{unit and ' ' + unit}",
                  None if value is None else value <= target, unit)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _side_by_side(r: dict[str, Any], max_mode: str,
                  fixed_mode: str) -> tuple[float | None, ...]:
    """sipd's and Kamailio's max rates, then their CPU per operation at the fixed rate."""
    maxed, fixed = r.get("max", []), r.get("fixed", [])
    return (*(_mean([x.get("rate") for x in _rows(maxed, t, max_mode)]) for t in ("sipd", "kam")),
            *(_mean([x.get("cpu_ms_op") for x in _rows(fixed, t, fixed_mode)])
              for t in ("sipd", "kam")))


def registrar_figures(r: dict[str, Any]) -> list[Figure]:
    s_max, k_max, s_cpu, k_cpu = _side_by_side(r, "reg-max", "reg")
    half = r.get("half") or {}
    return [
        _at_least(f"REGISTER+auth max rate, sipd/kam ({_n(s_max)}/{_n(k_max)} per s)",
                  _ratio(s_max, k_max), 0.15),
        _at_least(f"REGISTER+auth CPU per op at {_n(r.get('reg_rate'))}/s, kam/sipd "
                  f"({_n(k_cpu, 3)}/{_n(s_cpu, 3)} ms)", _ratio(k_cpu, s_cpu), 0.20),
        _at_most(f"REGISTER p99 at half sipd's max ({_n(half.get('rate'))}/s)",
                 half.get("p99"), 10.0, "ms"),
    ]


def call_figures(r: dict[str, Any]) -> list[Figure]:
    s_max, k_max, s_cpu, k_cpu = _side_by_side(r, "call-max-auth", "call-auth")
    return [
        _at_least(f"auth call setup max rate, sipd/kam ({_n(s_max)}/{_n(k_max)} per s)",
                  _ratio(s_max, k_max), 0.30),
        _at_least(f"auth call setup CPU per call at {_n(r.get('call_rate'))}/s, kam/sipd "
                  f"({_n(k_cpu, 3)}/{_n(s_cpu, 3)} ms)", _ratio(k_cpu, s_cpu), 0.30),
    ]


def burst_figures(rows: Any) -> list[Figure]:
    """burst_memory.py's results.json: one entry per size, RSS/PSS as [rss, pss] kB."""
    out: list[Figure] = []
    for size in rows if isinstance(rows, list) else []:
        held = size.get("reloaded") or size.get("registered")
        settled, before = size.get("settled") or [0, 0], size.get("before") or [0, 0]
        if not held or not settled[0]:
            continue
        whole = settled[0] * 1024 / held
        growth = (settled[0] - before[0]) * 1024 / held
        label = f"{held:,} bindings after a burst at {_n(size.get('rate'))}/s, settled"
        if held >= 100_000:
            out.append(_at_most(f"whole-daemon RSS per binding, {label}", whole, 2048, "B"))
            out.append(_at_most(f"RSS growth per binding, {label}", growth, 2048, "B"))
            out.append(_at_most(f"restart with {held:,} bindings, exec to first answer",
                                size.get("ready_s"), 10.0, "s"))
        else:
            out.append(Figure(f"whole-daemon RSS per binding, {label}", whole, "(report)", None,
                              "B"))
    return out


def scaling_figures(r: dict[str, Any]) -> list[Figure]:
    out: list[Figure] = []
    for size in r.get("sizes", [])[1:]:
        ratio = size.get("ratio")
        out.append(Figure(f"CPU per REGISTER with {_n(size.get('bindings'))} bindings held, "
                          f"vs the smallest size", ratio, "1 +- 0.2",
                          None if ratio is None else abs(ratio - 1) <= 0.2))
    for size in r.get("sizes", []):
        if (size.get("bindings") or 0) >= 100_000:
            out.append(_at_most(f"restart with {_n(size.get('bindings'))} bindings, exec to "
                                f"first answer", size.get("restart_s"), 10.0, "s"))
    return out


FIGURES: dict[str, Callable[[Any], list[Figure]]] = {
    "scaling": scaling_figures,
    "registrar": registrar_figures,
    "calls": call_figures,
    "burst": burst_figures,
}


def _n(v: Any, places: int = 0) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v:,.{places}f}"


def own_verdicts(text: str) -> list[str]:
    """The lines of a benchmark's own table that carry a verdict."""
    return [line.rstrip() for line in text.splitlines()
            if ("PASS" in line or "MISS" in line) and not line.lstrip().startswith("+")]


def run(bench: Bench, out: Path, quick: bool) -> str:
    cmd = [sys.executable, str(HERE / bench.script)]
    if bench.results or bench.raw_out:
        cmd += ["--out", str(out / bench.name)]
    if quick and bench.quick:
        cmd.append("--quick")
    if quick:
        cmd += bench.quick_args
    print(f"\n=== {bench.script}: {' '.join(cmd[1:])}", flush=True)
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
    text = "".join(lines)
    (out / f"{bench.name}.out").write_text(text)
    if proc.returncode != 0:
        print(f"({bench.script} exited with {proc.returncode})")
    return text


def table(figures: list[Figure], copied: dict[str, list[str]]) -> str:
    rows = [f.cells() for f in figures]
    head = ("figure", "measured", "target", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    for name, found in copied.items():
        if found:
            lines.append(f"\n{name} (its own verdicts):")
            lines += [f"  {line.strip()}" for line in found]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs where a benchmark has them")
    ap.add_argument("--out", help="results directory (default: a new one under the temp dir)")
    ap.add_argument("--only", default="",
                    help="comma-separated names: " + ", ".join(b.name for b in BENCHES))
    ap.add_argument("--table-only", action="store_true",
                    help="only print the table of an earlier run's --out directory")
    ap.add_argument("--core", choices=("compiled", "pure"),
                    default="compiled" if COMPILED.is_dir() else "pure",
                    help="the build the daemon runs: compiled (make compiled's wheel, as "
                         "make install builds it; the default when it is there) or pure")
    args = ap.parse_args()
    if args.core == "compiled":
        if not COMPILED.is_dir():
            print(f"no compiled build at {COMPILED}: make compiled", file=sys.stderr)
            return 2
        # Every benchmark starts sipd from the checkout's venv: the wheel's
        # modules come first on its path.
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(COMPILED), os.environ.get("PYTHONPATH", "")) if p)
    sipd = HERE.parent / ".venv" / "bin" / "sipd"
    version = subprocess.run([str(sipd), "--version"], capture_output=True, text=True).stdout
    print(f"benchmarking {version.strip() or sipd}", flush=True)
    if args.core not in version:
        print(f"sipd --version does not name the {args.core} core", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sipd-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    chosen = [b for b in BENCHES if not args.only or b.name in args.only.split(",")]
    texts: dict[str, str] = {}
    for bench in chosen:
        if args.table_only:
            path = out / f"{bench.name}.out"
            texts[bench.name] = path.read_text(errors="replace") if path.exists() else ""
        elif (HERE / bench.script).exists():
            texts[bench.name] = run(bench, out, args.quick)
    figures: list[Figure] = []
    copied: dict[str, list[str]] = {}
    for bench in chosen:
        if bench.name in FIGURES:
            figures += FIGURES[bench.name](_load(out / bench.name / "results.json"))
        elif bench.name in texts:
            copied[bench.script] = own_verdicts(texts[bench.name])
    text = f"{version.strip()}\n" + table(figures, copied)
    print("\n" + "=" * 100 + "\n" + text)
    print("\nRatios come from one run on one machine; absolute figures move 10-40 % between runs.")
    print(f"raw output: {out}")
    (out / "table.txt").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps([f.__dict__ for f in figures], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
