"""What the benchmark prints and draws: the live progress line, the table, ratios, targets, PNG."""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "Progress",
    "latency",
    "markdown",
    "merge_counts",
    "merge_lat",
    "merge_samples",
    "one_line",
    "plot",
    "ratios",
    "table",
    "targets",
]

#: Percentiles kept in the JSON for each latency distribution (the plot draws these).
PERCENTILES = (0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100)

#: Order and labels of the targets in tables and plots.
TARGET_LABELS = {
    "lanlic": "lanlic",
    "lanlic-policy": "lanlic (policy on)",
    "ceiling": "ceiling",
    "ceiling-streams": "ceiling (streams)",
    "redis": "Redis",
    "cluster": "cluster (3 on etcd)",
}


class Progress:
    """A live line on stderr when it is a terminal; one line at the end otherwise."""

    def __init__(
        self, label: str, total: int | None, quiet: bool, start: float | None = None
    ) -> None:
        self.label = label
        self.total = total
        self.tty = sys.stderr.isatty() and not quiet
        self.start = start if start is not None else time.monotonic()
        self.count = 0
        self._last = 0.0

    def update(self, count: int) -> None:
        self.count = count
        now = time.monotonic()
        if not self.tty or now - self._last < 0.2:
            return
        self._last = now
        el = max(now - self.start, 0.0)
        of = f"/{self.total}" if self.total else ""
        rate = f"  {count / el:,.0f}/s" if el > 0.5 else ""
        sys.stderr.write(f"\r\x1b[K  {self.label}  {el:5.1f} s  {count:,}{of}{rate}")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# --------------------------------------------------------------------------------- merging


def merge_counts(results: Iterable[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in r["counts"].items():
            out[k] = out.get(k, 0) + v
    return out


def merge_lat(results: Iterable[dict[str, Any]]) -> array[float]:
    out = array("d")
    for r in results:
        out.extend(r["lat"])
    return out


def merge_samples(results: Iterable[dict[str, Any]], key: str) -> array[float]:
    out = array("d")
    for r in results:
        out.extend(r["extra"].get(key, ()))
    return out


def latency(samples: array[float]) -> dict[str, Any]:
    """Percentiles in milliseconds (nearest rank) of samples in seconds."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    n = len(s)

    def pct(p: float) -> float:
        i = min(n - 1, max(0, round(p / 100 * n + 0.5) - 1))
        return round(s[i] * 1000, 4)

    return {
        "n": n,
        "mean": round(sum(s) / n * 1000, 4),
        "p50": pct(50),
        "p99": pct(99),
        "p999": pct(99.9),
        "max": round(s[-1] * 1000, 4),
        "percentiles": [[p, pct(p)] for p in PERCENTILES],
    }


# ----------------------------------------------------------------------------------- figures


def _f(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and digits:
        return f"{v:,.{digits}f}"
    if isinstance(v, (int, float)):
        return f"{v:,.0f}"
    return str(v)


def _ms(lat: dict[str, Any], key: str) -> str:
    v = lat.get(key)
    return "-" if v is None else f"{v:.2f}"


def one_line(scenario: str, name: str, d: dict[str, Any]) -> str:
    """The line printed as each (scenario, target) finishes."""
    lat = d.get("latency", {})
    head = f"{scenario:<18} {TARGET_LABELS.get(name, name):<18}"
    cpu = f"server CPU {_f(d.get('server_cpu_pct'))}%, generators {_f(d.get('gen_cpu_pct'))}%"
    if scenario == "burst":
        return (
            f"{head} {d['seated']}/{d['n']} seated in {_f(d['all_seated_s'], 2)} s, "
            f"refused {d['refused']}, errors {d['errors']}; {cpu}"
        )
    if scenario == "steady":
        return (
            f"{head} {d['rate']:,.0f}/s renews, p50 {_ms(lat, 'p50')} p99 {_ms(lat, 'p99')} "
            f"p99.9 {_ms(lat, 'p999')} max {_ms(lat, 'max')} ms, lost {d['lost']}; {cpu}"
        )
    if scenario.startswith("saturate"):
        return f"{head} {d['ops_per_s']:,.0f} ops/s, p50 {_ms(lat, 'p50')} ms; {cpu}"
    if scenario == "failover":
        return f"{head} {failover_text(d)}"
    return (
        f"{head} {d['sessions_per_s']:,.0f} sessions/s, refused {d['refused']}, "
        f"vanished {d['vanished']}, held after expiry {_f(d['leaked_after_expiry'])}; {cpu}"
    )


#: The throughput figure of each scenario, used for ratios and the lower row of the plot.
THROUGHPUT = {
    "burst": ("seats_per_s", "seats taken /s"),
    "steady": ("answered_rate", "renews answered /s"),
    "saturate-renew": ("ops_per_s", "renews /s"),
    "saturate-checkout": ("ops_per_s", "checkouts + releases /s"),
    "churn": ("sessions_per_s", "sessions /s"),
}


def failover_text(d: dict[str, Any]) -> str:
    """The failover figure (lanlic.bench.cluster) in words."""
    every = _f(d["all_moved_s"], 3)
    return (
        f"{d['on_killed_member']} of {d['clients']} clients on the killed member, all confirmed "
        f"by another within {every} s (median {_f(d['moved_p50_s'], 3)} s); lost {d['lost']}, "
        f"held after {d['held_after']}/{d['clients']}"
    )


def ratios(scenarios: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for sc, by_target in scenarios.items():
        key = THROUGHPUT.get(sc, (None, ""))[0]
        lan = by_target.get("lanlic", {}).get(key) if key else None
        r: dict[str, float | None] = {}
        for other in ("ceiling", "ceiling-streams", "redis"):
            v = by_target.get(other, {}).get(key) if key else None
            if v is not None and lan is not None and v > 0:
                r[f"lanlic/{other}"] = round(lan / v, 3)
        pol = by_target.get("lanlic-policy", {}).get(key) if key else None
        if pol is not None and lan:
            r["policy/no policy"] = round(pol / lan, 3)
        clu = by_target.get("cluster", {}).get(key) if key else None
        if clu is not None and lan:
            r["cluster/lanlic"] = round(clu / lan, 3)
        if sc == "saturate-renew":
            a = by_target.get("ceiling-streams", {}).get("ops_per_s")
            b = by_target.get("ceiling", {}).get("ops_per_s")
            if a and b:
                r["streams/protocol"] = round(a / b, 3)
        out[sc] = r
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's targets, each met, missed, or not measured at these sizes. Throughput is
    judged by its ratio to the ceiling and to Redis in the same run (the VM's noise moves all
    targets alike); latency and memory by their bounds."""
    sc = data["scenarios"]
    rt = data.get("ratios", {})
    out: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, value: str) -> None:
        out.append({"target": name, "met": met, "measured": value})

    r = rt.get("saturate-renew", {})
    if "lanlic/ceiling" in r:
        add(
            "saturate renew >= 75% of the ceiling",
            r["lanlic/ceiling"] >= 0.75,
            f"{r['lanlic/ceiling']:.0%}",
        )
    if "lanlic/redis" in r:
        add("saturate renew above Redis", r["lanlic/redis"] > 1.0, f"{r['lanlic/redis']:.2f}x")
    r = rt.get("saturate-checkout", {})
    if "lanlic/ceiling" in r:
        add(
            "saturate checkout+release >= 70% of the ceiling",
            r["lanlic/ceiling"] >= 0.70,
            f"{r['lanlic/ceiling']:.0%}",
        )
    if "lanlic/redis" in r:
        add(
            "saturate checkout+release above Redis",
            r["lanlic/redis"] > 1.0,
            f"{r['lanlic/redis']:.2f}x",
        )
    co = sc.get("saturate-checkout", {}).get("lanlic", {}).get("latency", {})
    if co.get("p999") is not None:
        add("saturate checkout+release p99.9 < 20 ms", co["p999"] < 20.0, f"{co['p999']} ms")
    st = sc.get("steady", {}).get("lanlic")
    if st and "latency" in st:
        big = st["held"] >= 10_000 and abs(data["params"]["heartbeat"] - 1.0) < 1e-9
        p99 = st["latency"].get("p99")
        ok = p99 is not None and p99 < 2.0 and st["lost"] == 0 and st["unanswered"] == 0
        add(
            "steady 10k seats renewing 1/s: p99 < 2 ms, none lost",
            ok if big else None,
            f"{st['held']} seats, p99 {p99} ms, lost {st['lost']}"
            + ("" if big else " (not at full size)"),
        )
    b = sc.get("burst", {}).get("lanlic")
    if b and "seated" in b:
        big = b["n"] >= 10_000
        took = b["all_seated_s"] or 99.0
        redis = sc["burst"].get("redis", {}).get("all_seated_s")
        ok = b["seated"] == b["n"] and b["refused"] == 0 and took < 2.0
        ok = ok and (redis is None or took <= redis)
        add(
            "burst of 10,000 seated no slower than Redis and under 2 s, none refused",
            ok if big else None,
            f"{b['seated']}/{b['n']} in {b['all_seated_s']} s (Redis {redis} s), "
            f"refused {b['refused']}" + ("" if big else " (not at full size)"),
        )
    r = rt.get("churn", {})
    if "lanlic/redis" in r:
        add(
            "churn sessions/s at least Redis's",
            r["lanlic/redis"] >= 1.0,
            f"{r['lanlic/redis']:.2f}x",
        )
    mem = [sc.get(k, {}).get("lanlic", {}).get("bytes_per_seat") for k in ("burst", "steady")]
    mem = [m for m in mem if m is not None]
    if mem:
        worst = max(mem)
        add("<= 3 KiB per held seat", worst <= 3072, f"{worst:,} B (RSS, seat + connection)")
    return out


def _borrows(d: dict[str, Any]) -> str:
    return _f(d["borrow_pairs_per_s"], 1) if d.get("borrowers") else "n/a"


def _borrow_lat(d: dict[str, Any]) -> str:
    if not d.get("borrowers") or not d["borrow_latency"].get("n"):
        return "n/a"
    return f"{d['borrow_latency']['p50']:.1f}/{d['return_latency'].get('p50', 0):.1f}"


def table(data: dict[str, Any]) -> str:
    sc = data["scenarios"]
    names = [t for t in TARGET_LABELS if any(t in by for by in sc.values())]
    cols = [TARGET_LABELS[t] for t in names]
    rows: list[tuple[str, str, list[str], str]] = []

    def cell(d: dict[str, Any] | None, fn: Any) -> str:
        if d is None:
            return ""
        if "skipped" in d:
            return "skipped"
        try:
            return str(fn(d))
        except (KeyError, TypeError):
            return "-"

    def row(scn: str, label: str, fn: Any, ratio: str = "") -> None:
        by = sc.get(scn, {})
        rows.append((scn, label, [cell(by.get(t), fn) for t in names], ratio))

    def rtext(scn: str) -> str:
        r = data.get("ratios", {}).get(scn, {})
        parts = []
        for k in ("lanlic/ceiling", "lanlic/redis"):
            if k in r:
                parts.append(f"{k.split('/')[1]} {r[k]:.0%}")
        if "policy/no policy" in r:
            parts.append(f"policy on/off {r['policy/no policy']:.0%}")
        if "cluster/lanlic" in r:
            parts.append(f"cluster/lanlic {r['cluster/lanlic']:.0%}")
        return ", ".join(parts)

    def lat3(d: dict[str, Any]) -> str:
        lt = d["latency"]
        return f"{lt['p50']:.2f}/{lt['p99']:.2f}/{lt['p999']:.2f}/{lt['max']:.1f}"

    def cpu(d: dict[str, Any]) -> str:
        return f"{_f(d['server_cpu_pct'])}/{_f(d['gen_cpu_pct'])}"

    def mem(d: dict[str, Any]) -> str:
        return _f(d["bytes_per_seat"])

    if "burst" in sc:
        row("burst", "all seated, s", lambda d: _f(d["all_seated_s"], 2), rtext("burst"))
        row(
            "burst",
            "seated/refused/errors",
            lambda d: f"{d['seated']}/{d['refused']}/{d['errors']}",
        )
        row("burst", "p50/p99/p99.9/max ms", lat3)
        row("burst", "bytes per held seat", mem)
        row("burst", "CPU % server/gen", cpu)
        row("burst", "CPU us a client server/gen", _cpu_us("client"))
    if "steady" in sc:
        row(
            "steady",
            "renews/s asked/answered",
            lambda d: f"{d['target_rate']:,.0f}/{d['answered_rate']:,.0f}",
            rtext("steady"),
        )
        row("steady", "p50/p99/p99.9/max ms", lat3)
        row("steady", "lost/unanswered", lambda d: f"{d['lost']}/{d['unanswered']}")
        row("steady", "bytes per held seat", mem)
        row("steady", "CPU % server/gen", cpu)
    for key, label in (("saturate-renew", "renews/s"), ("saturate-checkout", "ops/s")):
        if key in sc:
            row(key, label, lambda d: _f(d["ops_per_s"]), rtext(key))
            row(key, "p50/p99/p99.9/max ms", lat3)
            row(key, "CPU % server/gen", cpu)
    if "churn" in sc:
        row("churn", "sessions/s", lambda d: _f(d["sessions_per_s"]), rtext("churn"))
        row("churn", "refused/vanished", lambda d: f"{d['refused']}/{d['vanished']}")
        row("churn", "held after expiry", lambda d: _f(d["leaked_after_expiry"]))
        row(
            "churn",
            "checkout p50/p99 ms",
            lambda d: f"{d['latency']['p50']:.2f}/{d['latency']['p99']:.2f}",
        )
        row("churn", "borrow+return pairs/s", _borrows)
        row("churn", "borrow/return p50 ms", _borrow_lat)
        row("churn", "CPU % server/gen", cpu)
        row("churn", "CPU us a session server/gen", _cpu_us("session"))

    if "failover" in sc:
        row(
            "failover",
            "clients on the killed one",
            lambda d: f"{d['on_killed_member']}/{d['clients']}",
        )
        row(
            "failover",
            "all moved / median, s",
            lambda d: f"{_f(d['all_moved_s'], 3)}/{_f(d['moved_p50_s'], 3)}",
        )
        row("failover", "seats lost", lambda d: d["lost"])

    w0 = max([len("scenario")] + [len(r[0]) for r in rows])
    w1 = max([len("figure")] + [len(r[1]) for r in rows])
    wc = [
        max(len(c), *(len(r[2][i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
    ]
    lines = []
    head = (
        f"{'scenario':<{w0}}  {'figure':<{w1}}  "
        + "  ".join(f"{c:>{wc[i]}}" for i, c in enumerate(cols))
        + "  lanlic vs"
    )
    lines.append(head)
    lines.append("-" * len(head))
    last = ""
    for scn, label, cells, ratio in rows:
        name = scn if scn != last else ""
        last = scn
        lines.append(
            f"{name:<{w0}}  {label:<{w1}}  "
            + "  ".join(f"{c:>{wc[i]}}" for i, c in enumerate(cells))
            + (f"  {ratio}" if ratio else "")
        )
    r = data.get("ratios", {}).get("saturate-renew", {})
    if "streams/protocol" in r:
        lines.append(
            f"\nceiling with asyncio streams / with asyncio.Protocol: {r['streams/protocol']:.0%}"
        )
    for s, by in sc.items():
        for t, d in by.items():
            if "skipped" in d:
                lines.append(f"{s} {t}: skipped: {d['skipped']}")
    if "churn" in sc:
        d = sc["churn"].get("lanlic", {})
        if "borrows" in d:
            cpu = d.get("laptops_cpu_pct")
            laptops_cpu = f"; their CPU {cpu:.0f}%" if cpu is not None else ""
            lines.append(f"churn borrows and returns (lanlic): {d['borrows']}{laptops_cpu}")
    tg = data.get("targets", [])
    if tg:
        lines.append("\ntargets:")
        for t in tg:
            mark = {True: "met ", False: "MISS", None: "n/a "}[t["met"]]
            lines.append(f"  [{mark}] {t['target']}: {t['measured']}")
    p = data["params"]
    pressure = data.get("cpu_pressure_pct")
    lines.append(
        f"\n{data['machine'].get('cpus')} CPUs, loop {p['loop']}, {_build(data)}, {p['procs']} "
        f"generator processes, run took {data['duration_s']} s"
        + (f"; some task waited for a CPU {pressure}% of the time" if pressure is not None else "")
    )
    return "\n".join(lines)


def _build(data: dict[str, Any]) -> str:
    """Which build of the server ran: pure Python or the compiled one (setup.py)."""
    compiled = data["machine"].get("compiled")
    return f"compiled build ({len(compiled)} modules)" if compiled else "pure Python"


def _cpu_us(unit: str) -> Callable[[dict[str, Any]], str]:
    """The cell of ``server_cpu_us_per_<unit>`` and ``gen_cpu_us_per_<unit>`` (Bench._cpu_per)."""

    def cell(d: dict[str, Any]) -> str:
        return f"{_f(d[f'server_cpu_us_per_{unit}'])} / {_f(d[f'gen_cpu_us_per_{unit}'])}"

    return cell


def markdown(data: dict[str, Any]) -> str:
    """The headline figures as a Markdown table (for a README)."""
    sc = data["scenarios"]
    p = data["params"]
    names = [
        t
        for t in ("lanlic", "lanlic-policy", "ceiling", "redis")
        if any(t in by for by in sc.values())
    ]
    out = [
        "| scenario | figure | " + " | ".join(TARGET_LABELS[t] for t in names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]

    def add(scn: str, label: str, figure: str, fn: Any) -> None:
        by = sc.get(scn)
        if by is None:
            return
        cells = []
        for t in names:
            d = by.get(t)
            if d is None or "skipped" in d:
                cells.append("skipped" if d else "")
                continue
            try:
                cells.append(str(fn(d)))
            except (KeyError, TypeError):
                cells.append("-")
        out.append(f"| {label} | {figure} | " + " | ".join(cells) + " |")

    def lat(d: dict[str, Any]) -> str:
        lt = d["latency"]
        return f"{lt['p50']:.2f} / {lt['p99']:.2f} / {lt['p999']:.1f}"

    burst = f"burst: {p['burst_n']:,} clients at once"
    add("burst", burst, "all seated, s", lambda d: f"{d['all_seated_s']:.2f}")
    add("burst", "", "refused / errors", lambda d: f"{d['refused']} / {d['errors']}")
    add("burst", "", "RSS per held seat, bytes", lambda d: f"{d['bytes_per_seat']:,}")
    add("burst", "", "CPU per client, server / generators, us", _cpu_us("client"))
    steady = f"steady: {p['steady_n']:,} seats renewing every {p['heartbeat']:g} s"
    add("steady", steady, "renew p50 / p99 / p99.9, ms", lat)
    add("steady", "", "leases lost", lambda d: d["lost"])
    sat = f"saturate: {p['sat_conns']} connections x {p['sat_depth']} in flight"
    add("saturate-renew", sat, "renews/s", lambda d: f"{d['ops_per_s']:,.0f}")
    add("saturate-checkout", "", "checkouts + releases/s", lambda d: f"{d['ops_per_s']:,.0f}")
    churn = f"churn: {p['churn_clients']} clients, {p['churn_lease']:g} s leases"
    add("churn", churn, "sessions/s", lambda d: f"{d['sessions_per_s']:,.0f}")
    add("churn", "", "seats held after expiry", lambda d: _f(d["leaked_after_expiry"]))
    add("churn", "", "borrow + return pairs/s", _borrows)
    add("churn", "", "CPU per session, server / generators, us", _cpu_us("session"))
    rt = data.get("ratios", {})
    notes = []
    for scn, label in (("saturate-renew", "renew"), ("saturate-checkout", "checkout+release")):
        r = rt.get(scn, {})
        if "lanlic/ceiling" in r:
            notes.append(f"saturate {label}: lanlic = {r['lanlic/ceiling']:.0%} of the ceiling")
        if "lanlic/redis" in r:
            notes[-1] += f", {r['lanlic/redis']:.2f}x Redis"
    streams = rt.get("saturate-renew", {}).get("streams/protocol")
    if streams:
        notes.append(f"the ceiling on asyncio streams runs at {streams:.0%} of asyncio.Protocol")
    return "\n".join(out) + ("\n\n" + "; ".join(notes) + "." if notes else "")


# -------------------------------------------------------------------------------------- plot


def plot(data: dict[str, Any], path: Path) -> None:
    """Latency percentiles (top) and throughput (bottom) per scenario; raises ImportError."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = {k: v for k, v in data["scenarios"].items() if k in THROUGHPUT}
    if not sc:
        return
    colours = {
        "lanlic": "#1f77b4",
        "lanlic-policy": "#17becf",
        "ceiling": "#7f7f7f",
        "ceiling-streams": "#bcbd22",
        "redis": "#d62728",
    }
    fig, axes = plt.subplots(2, len(sc), figsize=(4.2 * len(sc), 7.5), squeeze=False)
    for col, (name, by) in enumerate(sc.items()):
        top, bottom = axes[0][col], axes[1][col]
        labels, values, bar_colours = [], [], []
        for t, d in by.items():
            if "skipped" in d:
                continue
            pts = d.get("latency", {}).get("percentiles")
            if pts:
                xs = [min(p, 99.999) for p, _ in pts]
                ys = [max(v, 1e-3) for _, v in pts]
                # x on a "nines" scale: 1/(1-p) on a log axis spreads the tail out.
                top.plot(
                    [1 / (1 - x / 100) for x in xs],
                    ys,
                    marker=".",
                    label=TARGET_LABELS.get(t, t),
                    color=colours.get(t),
                )
            v = d.get(THROUGHPUT[name][0])
            if v is not None:
                labels.append(TARGET_LABELS.get(t, t))
                values.append(v)
                bar_colours.append(colours.get(t, "#333333"))
        top.set_xscale("log")
        top.set_yscale("log")
        ticks = [1, 2, 10, 100, 1000, 10000]
        top.set_xticks(ticks)
        top.set_xticklabels(["0", "50", "90", "99", "99.9", "99.99"])
        top.set_xlabel("percentile")
        top.set_ylabel("latency, ms")
        top.set_title(name)
        top.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8)
        bottom.bar(labels, values, color=bar_colours)
        bottom.set_ylabel(THROUGHPUT[name][1])
        bottom.tick_params(axis="x", labelsize=8)
        for i, v in enumerate(values):
            bottom.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=8)
    p = data["params"]
    fig.suptitle(
        f"lanlic bench: {data['machine'].get('cpus')} CPUs, loop {p['loop']}, {_build(data)}, "
        f"{data['started']}" + (" (quick)" if p.get("quick") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
