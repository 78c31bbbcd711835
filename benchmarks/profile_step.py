"""Where an LCD fit's SVI step spends its time: XLA's own trace of the compiled step, each
kernel's exclusive time attributed to the JAX function it came from.

Usage::

    python benchmarks/profile_step.py --screen replogle --genes 1000 --cells 20000 \
        --cache /tmp/scale [--steps 14] [--start 330] [--stop 380]

The fit runs one step per chunk; a timer turns JAX's profiler on at ``--start`` seconds (after
the step has compiled: watch the first chunk's time) and off at ``--stop``, so the trace holds
steady-state steps only (it keeps about a million events, which a fit's set-up fills).
XLA dumps the optimised step (``jit_run``) with each kernel's ``op_name``; the table sums the
exclusive time of the traced kernels (time inside a kernel minus the kernels it launched) by
the jitted functions on their path (e.g. ``jit(_pure_inv)``: the Gauss-Jordan loop) and the
primitive. This is how the session-10 fixes were found: 87% of a 1,000-coordinate shift
screen's step was two matrix inverses that a traced mask had put back on the path.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

DUMP_FLAGS = "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*run.*"


def kernel_sources(dump: Path) -> dict[str, str]:
    """``op_name`` of every instruction of the optimised step, by instruction name."""
    files = sorted(glob.glob(str(dump / "*jit_run.cpu_after_optimizations.txt")))
    if not files:
        sys.exit(f"no optimised step was dumped under {dump}")
    sources = {}
    pattern = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name="([^"]*)"')
    for line in Path(files[-1]).read_text().splitlines():
        match = pattern.match(line)
        if match:
            sources[match.group(1)] = match.group(2)
    return sources


def exclusive_times(trace_dir: Path) -> collections.Counter:
    """Microseconds of each kernel of the step, less the kernels it launched, summed."""
    files = sorted(glob.glob(str(trace_dir / "plugins/profile/*/perfetto_trace.json.gz")))
    if not files:
        sys.exit(f"no trace under {trace_dir}: was --start before the fit ended?")
    with gzip.open(files[-1]) as handle:
        events = json.load(handle)
    events = events["traceEvents"] if isinstance(events, dict) else events
    by_thread = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and event.get("args", {}).get("hlo_module") == "jit_run":
            by_thread[event["tid"]].append(event)
    totals = collections.Counter()
    for thread in by_thread.values():
        thread.sort(key=lambda event: (event["ts"], -event["dur"]))
        open_events: list[dict] = []
        for event in thread:
            while open_events and open_events[-1]["ts"] + open_events[-1]["dur"] <= event["ts"]:
                open_events.pop()
            if open_events:
                open_events[-1]["children"] = open_events[-1].get("children", 0) + event["dur"]
            open_events.append(event)
        for event in thread:
            totals[event["name"]] += event["dur"] - event.get("children", 0)
    return totals


def group(op_name: str) -> str:
    """``transpose`` (reverse mode) or not, the jitted functions on the path, the primitive."""
    path = re.sub(r"^jit\(run\)/while/body/closed_call/cond/branch_\d+_fun/", "", op_name)
    functions = " ".join(re.findall(r"jit\(\w+\)", path))
    loop = " [loop]" if "/while/" in path else ""
    backward = "transpose " if "transpose" in path else ""
    return f"{backward}{functions}{loop} :: {path.rsplit('/', 1)[-1] or '?'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", default="replogle")
    parser.add_argument("--genes", type=int, default=None)
    parser.add_argument("--cells", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--start", type=float, default=330.0, help="seconds until tracing")
    parser.add_argument("--stop", type=float, default=380.0, help="seconds until it stops")
    parser.add_argument("--rows", type=int, default=25)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="causalcell_profile_"))
    # XLA reads its flags once, when the backend starts: set them before JAX is imported.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={work / 'dump'} "
    os.environ["XLA_FLAGS"] += DUMP_FLAGS
    import jax
    from lcd_scale import SCREENS, screen

    from causalcell.models.lcd import LCD

    adata = screen(
        arguments.screen, 0, arguments.cache, genes=arguments.genes, cells=arguments.cells
    )

    def begin():
        options = jax.profiler.ProfileOptions()
        options.host_tracer_level = 3  # XLA's kernels (level 2 records only the executor)
        options.python_tracer_level = 0
        jax.profiler.start_trace(
            work / "trace", create_perfetto_trace=True, profiler_options=options
        )

    starter = threading.Timer(arguments.start, begin)
    stopper = threading.Timer(arguments.stop, jax.profiler.stop_trace)
    starter.start()
    stopper.start()
    started = time.perf_counter()
    model = LCD.fit(
        adata,
        intervention=SCREENS[arguments.screen]["kind"],
        size_factor_key="size_factor",
        num_steps=arguments.steps,
        key=0,
        progress_bar=False,
        chunk_size=1,
    )
    if starter.is_alive():  # still waiting: nothing was traced
        starter.cancel()
        stopper.cancel()
        sys.exit("the fit ended before --start: lower it (after the first step's compilation)")
    stopper.join()  # the trace is written when it stops
    seconds = model.posterior.config["chunk_seconds"]
    print(
        f"# fit {time.perf_counter() - started:.0f} s; seconds per step: "
        + ", ".join(f"{value:.2f}" for value in seconds)
    )
    sources = kernel_sources(work / "dump")
    totals = exclusive_times(work / "trace")
    grouped = collections.Counter()
    for kernel, microseconds in totals.items():
        grouped[group(sources.get(kernel, ""))] += microseconds
    traced = sum(grouped.values())
    print(f"# {traced / 1e6:.1f} s of kernel time traced (both threads), files in {work}")
    print(f"{'seconds':>9} {'share':>6}  functions [loop] :: primitive")
    for name, microseconds in grouped.most_common(arguments.rows):
        print(f"{microseconds / 1e6:9.3f} {microseconds / traced:6.1%}  {name}")


if __name__ == "__main__":
    main()
