"""docs/benchmarks.md and its plot, from one run's results."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import median
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a bastion or in CI
import matplotlib.pyplot as plt

NOTES = Path(__file__).resolve().parent / "notes.md"
LABELS = {
    "ansible-playbook": "ansible-playbook --check --diff, Ansible's defaults (forks 5, linear, no pipelining)",
    "ansible-playbook+pipelining": "the same, with pipelining",
    "ansible-runner": "ansible-runner API with the controller's settings (mitogen unpinned, pipelining, forks 50)",
    "controller check": "`controller check` (fetch, snapshot, decrypt, syntax check, check, record)",
    "controller check, CPU pinned": "the same with mitogen's own CPU pinning (`ansible.cpu_pinning: true`)",
    "controller verify": "`controller verify` (fetch, snapshot, one ssh look per host at its paths, user, group "
                         "and SysV service, record; nothing decrypted)",
    "controller sync --verify-first": "`controller sync --verify-first` (the same; no full check where hosts match)",
}


def seconds(runs: list[dict[str, float]]) -> float:
    return median(r["seconds"] for r in runs)


def write(results: dict[str, Any], out: Path) -> None:
    """Write benchmarks.md and benchmarks.png into ``out``."""
    _plot(results, out / "benchmarks.png")
    (out / "benchmarks.md").write_text(markdown(results))


def update(out: Path, key: str, measured: dict[str, Any]) -> None:
    """Put one measurement's results under ``key`` into ``out``'s benchmarks.json, and write the rest again."""
    stored = json.loads((out / "benchmarks.json").read_text())
    stored[key] = measured
    (out / "benchmarks.json").write_text(json.dumps(stored, indent=2) + "\n")
    write(stored, out)


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each target of issue #5: what it asks, what was measured, and whether it is met."""
    rows = []
    sizes = results["sizes"]
    for hosts, size in sizes.items():
        check = size["check"]
        ratio = seconds(check["ansible-playbook"]) / seconds(check["controller check"])
        rows.append((f"`controller check` ≥ 8x faster than ansible-playbook defaults, {hosts} hosts",
                     f"{ratio:.1f}x", ratio >= 8))
        verify = seconds(check["controller verify"])
        limit = 1 if int(hosts) <= 10 else 2
        rows.append((f"`controller verify` < {limit} s, {hosts} hosts", f"{verify:.2f} s", verify < limit))
        look = size.get("verify_look")
        if look:
            rows.append((f"`controller verify` still one ssh connection per host, {hosts} hosts ({look['paths']} "
                         f"paths and {look['resources']} resources a look)",
                         f"{look['connections']} for {look['hosts']} hosts, {look['verified']} verified",
                         look["connections"] == look["hosts"] == look["verified"]))
        if int(hosts) >= 50:
            fold = seconds(check["ansible-playbook"]) / verify
            rows.append((f"`controller verify` ≥ 50x faster than ansible-playbook defaults, {hosts} hosts",
                         f"{fold:.0f}x", fold >= 50))
        unpinned = seconds(check["controller check, CPU pinned"]) / seconds(check["controller check"])
        rows.append((f"CPU placement left to the kernel beats mitogen's pinning, {hosts} hosts",
                     f"{unpinned:.2f}x", unpinned >= 1))
    for hosts, size in sizes.items():
        check = size["check"]
        ours, raw = seconds(check["controller check"]), seconds(check["ansible-runner"])
        overhead = ours / raw - 1
        rows.append((f"controller overhead over raw ansible-runner ≤ 10%, {hosts} hosts",
                     f"{overhead:+.0%} ({ours - raw:+.2f} s)", overhead <= 0.10))
    for hosts, size in sizes.items():
        late = size["verify_latency"]
        every = late["interval"][0]
        found, fixed = max(late["detected"]), max(late["corrected"])
        rows.append((f"hand edit on one of {hosts} hosts, watch verifying every {every:g} s: detected < "
                     f"{every + 2:g} s", f"{found:.1f} s (worst of {len(late['detected'])})", found < every + 2))
        rows.append((f"... and corrected < {3 * every:g} s", f"{fixed:.1f} s (worst of {len(late['corrected'])})",
                     fixed < 3 * every))
    idle = max(median(size["only_if_changed"]) for size in sizes.values())
    rows.append(("`sync --only-if-changed` with nothing to do < 1 s", f"{idle:.2f} s", idle < 1))
    start = median(results["watch"]["webhook_to_start"])
    rows.append(("webhook to run start < 2 s", f"{start:.2f} s", start < 2))
    largest = max(sizes, key=int)
    peak = max(r["peak_mib"] for r in sizes[largest]["check"]["controller check"])
    rows.append((f"controller peak memory < 300 MB at {largest} hosts", f"{peak:.0f} MiB", peak < 300))
    long = results["long_run"]
    base = max(r["peak_mib"] for r in sizes[str(long["hosts"])]["check"]["controller check"])
    grown = max(long["peak_mib"]) - base
    rows.append((f"memory not growing with events ({long['events']} loop events vs a normal check)",
                 f"{max(long['peak_mib']):.0f} MiB vs {base:.0f} MiB ({grown:+.0f} MiB)", grown < 20))
    snap = median(results["large_repo"]["one_commit_changed"])
    rows.append((f"fetch + snapshot, {results['large_repo']['files']} files / {results['large_repo']['commits']} "
                 "commits, one commit changed < 2 s", f"{snap:.2f} s", snap < 2))
    if "dashboard" in results:  # results from before the dashboard have no such row
        board = results["dashboard"]
        rows.append((f"every dashboard page (HTML and JSON) < {board['target_ms']:.0f} ms, {board['hosts']} hosts and "
                     f"{board['runs']:,} runs", f"{board['slowest_max_ms']:.0f} ms (slowest request)",
                     board["slowest_max_ms"] < board["target_ms"]))
    if results.get("scale", {}).get("sizes"):
        scale = results["scale"]
        sizes = sorted(scale["sizes"], key=int)
        worst = max((way for way in scale["sizes"][sizes[0]] if way != "ansible-playbook"),
                    key=lambda way: scale_growth(scale, way))
        growth = scale_growth(scale, worst)
        rows.append((f"no cost grows worse than linearly from {sizes[0]} to {sizes[-1]} hosts (the bastion's CPU "
                     "per host within 25%)", f"{growth:.2f} at most ({worst})", growth <= 1.25))
    if "retention" in results:
        kept = results["retention"]
        rows.append((f"a generated week of {kept['verify_every_s']}-second verifies on {kept['hosts']} hosts: "
                     f"state.db < {kept['target_mb']:.0f} MB", f"{kept['state_db_mb']:.2f} MB",
                     kept["state_db_mb"] < kept["target_mb"]))
        rows.append((f"the same store: every dashboard page < {kept['target_ms']:.0f} ms",
                     f"{kept['slowest_max_ms']:.0f} ms (slowest request)", kept["slowest_max_ms"] < kept["target_ms"]))
        rows.append(("the same store: every state change still in `history`",
                     f"{kept['state_changes_in_history']} of {kept['state_changes']}",
                     kept["state_changes_in_history"] == kept["state_changes"]))
    return rows


def dashboard_markdown(board: dict[str, Any]) -> list[str]:
    """The dashboard's table: each page's median and slowest answer over real HTTP."""
    lines = ["", "## Dashboard", "",
             f"`controller serve` on a state store of {board['hosts']} hosts and {board['runs']:,} runs (filled "
             f"through `controller.state.Store`), {board['requests_per_page']} requests per page, one at a time "
             f"(`python -m bench.dashboard`); target {board['target_ms']:.0f} ms.", "",
             "| page | median | slowest | size |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| `{page}` | {t['median_ms']:.1f} ms | {t['max_ms']:.1f} ms | {t['bytes'] / 1024:.1f} KiB |"
              for page, t in board["pages"].items()]
    commands = board.get("commands")  # results from before the commands were timed have none
    if commands:
        before = "before_ms" in next(iter(commands.values()))
        lines += ["", f"The inspection commands on the same store, median wall time of {board['command_reps']} runs "
                  f"each (a whole process: Python's start, the imports, the query, the output)"
                  + (f", this build and {board['before']} run in turn, measured on {board['measured_at']} "
                     f"(load {board['load']:.1f} at the start):" if before else ":"), "",
                  "| command | this build |" + (" before | ratio |" if before else ""),
                  "| --- | ---: |" + (" ---: | ---: |" if before else "")]
        lines += [f"| `controller {name}` | {c['now_ms']:.0f} ms |"
                  + (f" {c['before_ms']:.0f} ms | {c['before_ms'] / c['now_ms']:.2f}x |" if before else "")
                  for name, c in commands.items()]
    return lines


def health_markdown(health: dict[str, Any]) -> list[str]:
    """The health gate's table: each look's median wall and client CPU time at each size."""
    return ["", "## Health checks", "",
            f"What a rollout's health gate costs (`python -m bench.health`, {health['measured_at']}, load "
            f"{health['load']:.1f} at the start): one ssh round trip per host of the batch, all at once, in the "
            "look `verify` takes. Checks: `command: test -d /srv/bench`, `tcp:` the host's sshd, `http:` a local "
            f"service answering 200. Medians of {health['reps']} runs, interleaved; CPU is that of the ssh clients "
            "and the reaper on the bastion (the hosts' side is not counted).", "", *_ways_table(health, "look")]


def retention_markdown(kept: dict[str, Any]) -> list[str]:
    """A generated week of a watch's history: what state.db keeps of it, and the dashboard on it."""
    generated = ", ".join(f"{n:,} {kind}" for kind, n in sorted(kept["generated"].items()))
    rows = ", ".join(f"{n:,} {kind}" for kind, n in sorted(kept["rows"].items()))
    newest = kept["newest_verify"]
    lines = ["", "## Retention", "",
             f"A generated week of a watch's history (`python -m bench.retention`, {kept['measured_at']}, load "
             f"{kept['load']:.1f} at the start): {kept['apps']} apps of {kept['hosts'] // kept['apps']} hosts, a "
             f"verify of each every {kept['verify_every_s']} s, a scheduled drift check of each every hour, two hand "
             "edits an app a day (found by a verify, corrected by a sync) and one release an app a day; the last app "
             "is under policy detect with one host drifted all week (each verify checks it in full and reports the "
             "same diff). Recorded as `controller watch` records them, through `controller.state.Store` on a clock "
             "of its own, then `controller serve` on it.", "",
             f"- Runs recorded: {kept['generated_runs']:,} ({generated}); rows kept: {kept['rows_total']:,} ({rows}).",
             f"- `state.db`: {kept['state_db_mb']:.2f} MB (target under {kept['target_mb']:.0f} MB); recording took "
             f"{kept['ms_per_run_recorded']:.2f} ms a run, folding and pruning included.",
             f"- State changes still in the history: {kept['state_changes_in_history']} of {kept['state_changes']}; "
             f"app0's newest verify stands for {newest['folded']:,} runs since {newest['first_started']} and finished "
             f"at {newest['finished']}, when the last was generated ({newest['last_generated']}); every host of "
             "app0 points at it: " + ("yes" if kept["hosts_point_at_newest_verify"] else "no") + ".",
             f"- The drift schedule's clock (app0's newest full check) ended "
             f"{kept['last_full_check_minutes_before_the_end']:.0f} min before the last verify; the detect app with "
             f"its standing drift holds {kept['rows_of_the_detect_app']:,} rows.", "",
             "| page | median | slowest | size |", "| --- | ---: | ---: | ---: |"]
    return lines + [f"| `{page}` | {t['median_ms']:.1f} ms | {t['max_ms']:.1f} ms | {t['bytes'] / 1024:.1f} KiB |"
                     for page, t in kept["pages"].items()]


def scale_markdown(scale: dict[str, Any]) -> list[str]:
    """One bastion as the fleet grows: each way's wall, machine CPU and peak memory per size, and how its CPU per
    host grows from the smallest size to the largest (1.0: linear)."""
    sizes = sorted(scale["sizes"], key=int)
    small, large = sizes[0], sizes[-1]
    lines = ["", "## Scale", "",
             f"`python -m bench.scale --hosts {','.join(sizes)}` ({scale['measured_at']}, {scale['cores']} cores, load "
             f"{scale['load']:.1f} at the start): the reference fleet at each size, converged by a first sync, then "
             f"each way {scale['reps']} times interleaved (medians). Wall: seconds; CPU: seconds of the bastion "
             "side (the command and every process it started) / of the whole machine (the lab's hosts share it, so "
             "`ansible.timeout` is 30 s here); peak: the `controller` process / the largest process it started "
             f"(MiB). Growth: bastion CPU per host at {large} hosts over that at {small} (1.00 is linear), then "
             "the whole machine's.", "",
             "| way | " + " | ".join(f"{h} hosts: wall / CPU / peak" for h in sizes) + " | growth |",
             "| --- |" + " ---: |" * (len(sizes) + 1)]
    for way in scale["sizes"][small]:
        if way == "ansible-playbook":
            continue
        cells = [scale["sizes"][h][way] for h in sizes]
        lines.append(f"| {way} | " + " | ".join(
            f"{c['seconds']:.1f} / {_bastion(c)}{_cpu(c['cpu'])} s / {c['peak_mib']:.0f} / {c['child_peak_mib']:.0f}"
            for c in cells) + f" | {_growths(scale, way)} |")
    plain = scale["sizes"][small].get("ansible-playbook")
    if plain:
        per_host = plain["seconds"] / int(small)
        guesses = []
        for hosts in sizes[1:]:
            guess = per_host * int(hosts)
            check = scale["sizes"][hosts]["controller check"]["seconds"]
            guesses.append(f"{hosts} hosts ≈ {guess / 60:.0f} min, {guess / check:.0f}x `controller check`")
        lines += ["", f"ansible-playbook --check --diff with Ansible's defaults ran at {small} hosts only: "
                  f"{plain['seconds']:.0f} s. Extrapolated at its {per_host:.1f} s a host (not measured): "
                  + ", ".join(guesses) + "."]
    if "failed" in scale:
        lines += ["", f"At {scale['failed']['hosts']} hosts the run stopped: {scale['failed']['error']}"]
    return lines


def scale_growth(scale: dict[str, Any], way: str, figure: str = "") -> float:
    """How ``way``'s CPU per host grows from the smallest size to the largest (1.0: linear): the bastion
    side's where measured (``figure`` unless given), else the whole machine's."""
    sizes = sorted(scale["sizes"], key=int)
    small, large = scale["sizes"][sizes[0]][way], scale["sizes"][sizes[-1]][way]
    figure = figure or ("bastion_cpu" if "bastion_cpu" in small else "cpu")
    return float((large[figure] / int(sizes[-1])) / (small[figure] / int(sizes[0])))


def _bastion(cell: dict[str, float]) -> str:
    return f"{_cpu(cell['bastion_cpu'])} / " if "bastion_cpu" in cell else ""


def _cpu(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def _growths(scale: dict[str, Any], way: str) -> str:
    machine = f"{scale_growth(scale, way, 'cpu'):.2f}"
    if "bastion_cpu" not in scale["sizes"][min(scale["sizes"], key=int)][way]:
        return machine
    return f"{scale_growth(scale, way):.2f} / {machine}"


def parallel_markdown(parallel: dict[str, Any]) -> list[str]:
    """Two independent apps one after the other or at once: the check's median wall and machine CPU time."""
    return ["", "## Independent apps at once", "",
            f"`controller check` of two apps that depend on nothing, each half of the hosts (`python -m "
            f"bench.parallel`, {parallel['measured_at']}, {parallel['cores']} cores, load {parallel['load']:.1f} "
            f"at the start). Medians of {parallel['reps']} runs, interleaved; CPU is the whole machine's, the lab's "
            "hosts included (they run on it too).", "", *_ways_table(parallel, "apps")]


def nodes_markdown(nodes: dict[str, Any]) -> list[str]:
    """A check from the bastion and through an execution node: median wall, bastion and machine CPU seconds."""
    sizes = sorted(nodes["sizes"], key=int)
    return ["", "## Execution nodes", "",
            f"A no-change `controller check` of every host from the bastion, and with every host placed on an "
            f"execution node (another lab host; `python -m bench.nodes`, {nodes['measured_at']}, {nodes['cores']} "
            f"cores, load {nodes['load']:.1f} at the start). Medians of {nodes['reps']} runs, interleaved. Bastion "
            "CPU is the command's and all it starts (through the node: ssh and the stream; the playbook runs on "
            "the node); machine CPU counts everything, the node and the hosts included (they run on this machine "
            "too).", "",
            "| way | " + " | ".join(f"{h} hosts: wall / bastion CPU / machine CPU" for h in sizes) + " |",
            "| --- |" + " ---: |" * len(sizes),
            *(f"| {way} | " + " | ".join(f"{nodes['sizes'][h][way]['seconds']:.1f} s / "
                                         f"{_cpu(nodes['sizes'][h][way]['bastion_cpu'])} s / "
                                         f"{_cpu(nodes['sizes'][h][way]['cpu'])} s" for h in sizes) + " |"
              for way in nodes["sizes"][sizes[0]])]


def _ways_table(measured: dict[str, Any], what: str) -> list[str]:
    """A table of each way's median wall and CPU seconds (``what`` heads its first column), a column per size."""
    sizes = sorted(measured["sizes"], key=int)
    lines = ["| " + what + " | " + " | ".join(f"{h} hosts: wall / CPU" for h in sizes) + " |",
             "| --- |" + " ---: |" * len(sizes)]
    return lines + [f"| {way} | " + " | ".join(f"{measured['sizes'][h][way]['seconds']:.2f} / "
                                             f"{measured['sizes'][h][way]['cpu']:.2f} s" for h in sizes) + " |"
                    for way in measured["sizes"][sizes[0]]]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    sizes = results["sizes"]
    hosts = sorted(sizes, key=int)
    lines = [
        "# Benchmarks",
        "",
        "<!-- generated by `make bench` (bench/report.py); edit bench/notes.md for the prose -->",
        "",
        f"One run of `{'make bench-quick' if results['quick'] else 'make bench'}` on {m['date']}: "
        f"{m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, Python {m['python']}, {m['ansible']}. "
        f"Medians of {results['reps']} repetitions ({results['slow_reps']} of the two plain ansible-playbook "
        "ways, which take many minutes each); the ways were interleaved (rotating order) so that noise hits "
        f"them alike. The whole run took {results['duration_minutes']} minutes; the load average (1, 5, 15 min) "
        f"was {_load(results, 'start')} at the start and {_load(results, 'end')} at the end.",
        "",
        "The fleet: lab hosts (one sshd each on loopback), the example roles `base` and `app` (SOPS secrets "
        "included) plus a synthetic role of 16 file/template/copy/lineinfile tasks, "
        "nothing to change (a no-change drift check).",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in targets(results)]
    lines += ["", "## No-change drift check", "", "| way | " + " | ".join(f"{h} hosts" for h in hosts)
              + " | " + " | ".join(f"vs defaults, {h}" for h in hosts) + " |",
              "| --- |" + " ---: |" * (2 * len(hosts))]
    for way, label in LABELS.items():
        times = [seconds(sizes[h]["check"][way]) for h in hosts]
        ratios = [seconds(sizes[h]["check"]["ansible-playbook"]) / t for h, t in zip(hosts, times, strict=True)]
        lines.append(f"| {label} | " + " | ".join(f"{t:.1f} s" for t in times) + " | "
                     + " | ".join(f"{r:.1f}x" for r in ratios) + " |")
    lines += ["", "![time against hosts for each way](benchmarks.png)", "", "## The rest", "",
              "| measurement | " + " | ".join(f"{h} hosts" for h in hosts) + " |",
              "| --- |" + " ---: |" * len(hosts)]
    lines.append("| `controller sync` applying a one-line change to every host | "
                 + " | ".join(f"{median(sizes[h]['sync_one_line_change']):.1f} s" for h in hosts) + " |")
    lines.append("| hand edit to detected, watch verifying every "
                 f"{sizes[hosts[0]]['verify_latency']['interval'][0]:g} s (median / worst) | "
                 + " | ".join(f"{median(sizes[h]['verify_latency']['detected']):.1f} / "
                              f"{max(sizes[h]['verify_latency']['detected']):.1f} s" for h in hosts) + " |")
    lines.append("| hand edit to corrected (median / worst) | "
                 + " | ".join(f"{median(sizes[h]['verify_latency']['corrected']):.1f} / "
                              f"{max(sizes[h]['verify_latency']['corrected']):.1f} s" for h in hosts) + " |")
    lines.append("| peak memory of the `controller verify` process | "
                 + " | ".join(f"{max(r['peak_mib'] for r in sizes[h]['check']['controller verify']):.0f} MiB"
                              for h in hosts) + " |")
    lines.append("| `controller sync --only-if-changed`, nothing to do | "
                 + " | ".join(f"{median(sizes[h]['only_if_changed']):.2f} s" for h in hosts) + " |")
    lines.append("| peak memory of the `controller check` process | "
                 + " | ".join(f"{max(r['peak_mib'] for r in sizes[h]['check']['controller check']):.0f} MiB"
                              for h in hosts) + " |")
    watch, long, repo = results["watch"], results["long_run"], results["large_repo"]
    lines += [
        "",
        f"- `controller watch`, {hosts[0]} hosts, signed GitHub webhook: request to run start "
        f"{median(watch['webhook_to_start']):.2f} s (includes the 0.5 s debounce that coalesces bursts), "
        f"request to every host converged {median(watch['push_to_converged']):.1f} s.",
        f"- A long run: {long['loop_items']} loop items per host on {long['hosts']} hosts ({long['events']} item "
        f"events): `controller check` peaked at {max(long['peak_mib']):.0f} MiB in {median(long['seconds']):.1f} s.",
        f"- A repository of {repo['files']} files and {repo['commits']} commits: first fetch + snapshot "
        f"{repo['first'][0]:.2f} s; after one more commit {median(repo['one_commit_changed']):.2f} s.",
    ]
    if "dashboard" in results:
        lines += dashboard_markdown(results["dashboard"])
    if "health" in results:
        lines += health_markdown(results["health"])
    if "parallel" in results:
        lines += parallel_markdown(results["parallel"])
    if "nodes" in results:
        lines += nodes_markdown(results["nodes"])
    if results.get("scale", {}).get("sizes"):
        lines += scale_markdown(results["scale"])
    if "retention" in results:
        lines += retention_markdown(results["retention"])
    lines.append("")
    if NOTES.exists():
        lines += [NOTES.read_text().rstrip(), ""]
    return "\n".join(lines)


def _load(results: dict[str, Any], when: str) -> str:
    return "/".join(f"{x:g}" for x in results.get("load", {}).get(when, [])) or "not recorded"


def _plot(results: dict[str, Any], path: Path) -> None:
    sizes = results["sizes"]
    hosts = sorted(sizes, key=int)
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for way in LABELS:
        axes.plot([int(h) for h in hosts], [seconds(sizes[h]["check"][way]) for h in hosts], marker="o", label=way)
    axes.set_xlabel("hosts")
    axes.set_ylabel("no-change check, seconds (median)")
    axes.set_title("Drift check time against fleet size")
    axes.set_xticks([int(h) for h in hosts])
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
