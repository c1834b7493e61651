"""Run the benchmarks and print a summary table: ``python -m bench [--only NAME] [--quick] [--list]``."""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

from bench import artifacts, hook, operator, scale, server, server_r, starts, triggerer
from bench.common import Benchmark, BenchResult, Figure

BENCHMARKS: dict[str, Benchmark] = {
    "server.latency": server.bench_latency,
    "server.batch": server.bench_batch,
    "server.scaling": server.bench_scaling,
    "server.batch_r": server_r.bench_batch_r,
    "hook.poll": hook.bench_poll,
    "hook.results": hook.bench_results,
    "hook.poll_cpu": hook.bench_poll_cpu,
    "hook.start": starts.bench_starts,
    "artifacts.copy": artifacts.bench_copy,
    "operator.overhead": operator.bench_overhead,
    "operator.triggers": operator.bench_triggers,
    "operator.scale": scale.bench_scale,
    "deployment.triggerer": triggerer.bench_triggerer,
}
#: Benchmarks that run only when ``--only`` names them (or their group): they take many minutes.
OPT_IN = {"deployment.triggerer"}


def select(only: list[str]) -> list[str]:
    """Names matching any ``--only`` value, exactly or as a dotted prefix (``server`` = all server.*)."""
    if not only:
        return [n for n in BENCHMARKS if n not in OPT_IN]
    chosen = [n for n in BENCHMARKS if any(n == o or n.startswith(o.rstrip(".") + ".") for o in only)]
    if not chosen:
        raise SystemExit(f"no benchmark matches {', '.join(only)}; choose from: {', '.join(BENCHMARKS)}")
    return chosen


def _number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def print_result(result: BenchResult) -> None:
    print(f"\n== {result.name} ({result.seconds:.1f} s)")
    if result.error:
        print(f"   ERROR: {result.error}")
    for figure in result.figures:
        extra = "  ".join(x for x in (figure.versus, figure.verdict) if x)
        print(f"   {figure.name:<34} {_number(figure.value):>10} {figure.unit:<8} {extra}")
    print(f"   peak RSS: server tree {_mib(result.server_peak_mib)}, client {_mib(result.client_peak_mib)}")
    for note in result.notes:
        print(f"   - {note}")
    sys.stdout.flush()


def print_summary(results: list[BenchResult], quick: bool, seconds: float) -> None:
    header = (
        "benchmark",
        "figure",
        "value",
        "unit",
        "vs baseline / target",
        "",
        "server peak",
        "client peak",
    )
    rows: list[tuple[str, ...]] = []
    for result in results:
        figures = result.figures or [Figure("ERROR: " + result.error[:60], math.nan, "")]
        for i, figure in enumerate(figures):
            first = i == 0
            rows.append(
                (
                    result.name if first else "",
                    figure.name,
                    _number(figure.value),
                    figure.unit,
                    figure.versus,
                    figure.verdict,
                    _mib(result.server_peak_mib) if first else "",
                    _mib(result.client_peak_mib) if first else "",
                )
            )
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    right = {2, 6, 7}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if c in right else cell.ljust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    print(f"\nSummary ({'quick' if quick else 'full'} run, {seconds:.0f} s)")
    print(rule)
    print(line(header))
    print(rule)
    for row in rows:
        if row[0] and row is not rows[0]:
            print()
        print(line(row))
    print(rule)
    print(
        "server peak = sum of VmHWM of the server process and its workers; client peak = VmHWM of this process"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark, or those under a prefix (repeatable; e.g. server.batch)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.list:
        for name, bench in BENCHMARKS.items():
            opt_in = " (only with --only)" if name in OPT_IN else ""
            print(f"{name:<20} {(bench.__doc__ or '').strip().splitlines()[0]}{opt_in}")
        return 0
    started = time.perf_counter()
    results: list[BenchResult] = []
    for name in select(args.only):
        print(f"running {name}{' (quick)' if args.quick else ''} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = BENCHMARKS[name](args.quick)
        except Exception as exc:
            traceback.print_exc()
            result = BenchResult(name, error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
        results.append(result)
        print_result(result)
    print_summary(results, args.quick, time.perf_counter() - started)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
