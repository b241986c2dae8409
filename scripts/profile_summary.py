#!/usr/bin/env python3
"""Summarises an exp-profile.sh folder into its README.md: per engine the heartbeats per
server core-second, the user/kernel split, what each layer costs per datagram received,
and the top symbols (medians and means over the runs).

usage: scripts/profile_summary.py DIR ENGINES RATE BATCH DEVICES RUNS NAME
       scripts/profile_summary.py --self-test   (checks the layer rules; CI runs it)

A layer's cost per datagram is its share of the CPU's busy samples (idle left out)
times the shard's CPU time per datagram in the load's measured window (`server` in
each run's load JSON). perf samples all of CPU 0, so softirq work there counts too.
"""
import json
import re
import statistics
import sys

# Layers, first match wins: (name, user or kernel, pattern).
LAYERS = [
    ("shard core (user)", "[.]", r"^ringbeat_core::"),
    ("engine (user)", "[.]",
     r"ringbeat::engine|^ringbeat_sys::|^<?io_uring::|^(__recvmmsg|__sendmmsg|epoll_wait|syscall"
     r"|__GI___pthread_(enable|disable)_asynccancel)$"),
    ("other (user)", "[.]", r""),
    ("io_uring (kernel)", "[k]", r"^_*io_|^xa_load$|^xas_|io_uring"),
    ("recvmmsg, sendmmsg, epoll (kernel)", "[k]",
     r"sys_recvmsg|sys_sendmsg|recvmmsg|sendmmsg|msghdr|move_addr_to_user|import_iovec"
     r"|copy_iovec_from_user|^__put_user|^__get_user|epoll|^ep_|sockfd_lookup"),
    ("system call entry and exit (kernel)", "[k]",
     r"^entry_SYSCALL|do_syscall_64|syscall_exit|exit_to_user_mode|syscall_return|x64_sys_call"
     r"|^__x64_sys_|^__do_sys_|^fdget|^fget|^fput|^__fget|^__fput"),
    ("sleep and wake-up (kernel)", "[k]",
     r"^finish_task_switch|^__schedule$|^schedule|pick_next|^__pick|update_curr|dequeue_"
     r"|enqueue_|ttwu|try_to_wake_up|hrtimer|^sched_|__switch_to|^psi_"),
    ("network and memory (kernel)", "[k]", r""),
]
IDLE = re.compile(r"^(pv_native_safe_halt|native_safe_halt|default_idle|default_idle_call|do_idle"
                  r"|call_cpuidle|cpuidle_.*|arch_cpu_idle.*|poll_idle)$")


def layer_of(kind, sym):
    """The layer a symbol belongs to, None for idle."""
    if kind == "[k]" and IDLE.match(sym):
        return None
    for name, k, pattern in LAYERS:
        if k == kind and re.search(pattern, sym):
            return name
    return "other (user)" if kind == "[.]" else "network and memory (kernel)"


def read_symbols(path):
    rows = []
    for line in open(path):
        share, kind, sym = line.split(None, 2)
        rows.append((float(share.rstrip("%")), kind, sym.strip()))
    return rows


def summarise_run(rows, server):
    """(ns per datagram of each layer, user %, kernel %) for one run."""
    ns_per_dgram = None
    if server.get("datagrams") and server.get("cpu_seconds"):
        ns_per_dgram = server["cpu_seconds"] / server["datagrams"] * 1e9
    layers = {name: 0.0 for name, _, _ in LAYERS}
    for s, k, sym in rows:
        name = layer_of(k, sym)
        if name is not None:
            layers[name] += s
    # Every sample that is not idle is in one layer.
    busy = sum(layers.values())
    ns = {n: (v / busy * ns_per_dgram if ns_per_dgram and busy else None) for n, v in layers.items()}
    user = sum(s for s, k, _ in rows if k == "[.]")
    kernel = sum(s for s, k, _ in rows if k == "[k]")
    return ns, user, kernel


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    d, engines, rate, batch, devices, runs, name = sys.argv[1:]
    engines, runs = engines.split(), int(runs)
    env = f"ENGINES=\"{' '.join(engines)}\" RATE={rate} BATCH={batch} DEVICES={devices}"
    if runs != 1:
        env += f" RUNS={runs}"
    if name != f"profile-batch{batch}":
        env += f" NAME={name}"
    per = {}
    for e in engines:
        per[e] = []
        for r in range(1, runs + 1):
            rows = read_symbols(f"{d}/raw/{e}.r{r}.symbols.txt")
            server = json.load(open(f"{d}/raw/{e}.r{r}.load.json")).get("server") or {}
            ns, user, kernel = summarise_run(rows, server)
            per[e].append({"rows": rows, "ns": ns, "user": user, "kernel": kernel,
                           "hb": server.get("heartbeats_per_core_second"),
                           "total": sum(ns.values()) if all(v is not None for v in ns.values()) else None})
    over = f"median over {runs} runs" if runs > 1 else "one run"
    lines = [f"# Where the server's CPU goes: {int(rate):,} hb/s offered, {batch} per datagram, {int(devices):,} devices",
             "", "```sh", f"{env} scripts/exp-profile.sh", "```", "",
             f"| engine | hb per server core-second | CPU ns per datagram | user | kernel |", "|---|---|---|---|---|"]
    fmt = lambda v, f: f.format(v) if v is not None else "not measured"
    for e in engines:
        runs_e = per[e]
        lines.append(f"| {e} | {fmt(median(r['hb'] for r in runs_e), '{:,.0f}')} | "
                     f"{fmt(median(r['total'] for r in runs_e), '{:,.0f}')} | "
                     f"{median(r['user'] for r in runs_e):.1f}% | {median(r['kernel'] for r in runs_e):.1f}% |")
    lines += ["", f"Values are medians over runs ({over}; the engines alternated run by run)."
              " A datagram's CPU time is the shard's CPU seconds over the datagrams it took in"
              " the load's measured window; a layer's part of it is its share of CPU 0's busy"
              " samples (idle left out).", "",
              f"## Per datagram, by layer (ns, {over})", "",
              "| layer | " + " | ".join(engines) + " |", "|---|" + "---|" * len(engines)]
    for layer, _, _ in LAYERS:
        cells = [fmt(median(r["ns"][layer] for r in per[e]), "{:.0f}") for e in engines]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "Layers: `scripts/profile_summary.py` (`LAYERS`) sorts the symbols by name; the"
              " kernel's network path (UDP receive and send, the copies, skb allocation and"
              " release) is what every engine shares.", "",
              "## Top 20 symbols on the server's CPU (mean share of its samples over runs)", ""]
    for e in engines:
        mean = {}
        for r in per[e]:
            for s, k, sym in r["rows"]:
                mean[(k, sym)] = mean.get((k, sym), 0.0) + s / runs
        top = sorted(mean.items(), key=lambda kv: -kv[1])[:20]
        lines += [f"**{e}**", "", "| share | | symbol |", "|---|---|---|"]
        lines += [f"| {s:.2f}% | {'user' if k == '[.]' else 'kernel'} | `{sym}` |" for (k, sym), s in top]
        lines.append("")
    lines.append("Raw: `raw/<engine>.r<run>.symbols.txt` (every symbol), the load's JSON and log,"
                 " the server's stats.")
    open(f"{d}/README.md", "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


def self_test():
    cases = {
        ("[.]", "ringbeat_core::shard::ShardCore<M>::flush"): "shard core (user)",
        ("[.]", "<ringbeat::engine::epoll::EpollEngine as ringbeat::engine::shard_loop::Engine>::receive"): "engine (user)",
        ("[.]", "ringbeat_sys::bufring::BufRing::commit"): "engine (user)",
        ("[.]", "__recvmmsg"): "engine (user)",
        ("[.]", "__memmove_avx512_unaligned_erms"): "other (user)",
        ("[k]", "io_recvmsg_multishot.constprop.0"): "io_uring (kernel)",
        ("[k]", "__io_submit_flush_completions"): "io_uring (kernel)",
        ("[k]", "xa_load"): "io_uring (kernel)",
        ("[k]", "____sys_recvmsg"): "recvmmsg, sendmmsg, epoll (kernel)",
        ("[k]", "copy_msghdr_from_user"): "recvmmsg, sendmmsg, epoll (kernel)",
        ("[k]", "do_epoll_wait"): "recvmmsg, sendmmsg, epoll (kernel)",
        ("[k]", "do_syscall_64"): "system call entry and exit (kernel)",
        ("[k]", "finish_task_switch.isra.0"): "sleep and wake-up (kernel)",
        ("[k]", "_copy_to_iter"): "network and memory (kernel)",
        ("[k]", "iov_iter_advance"): "network and memory (kernel)",
        ("[k]", "pv_native_safe_halt"): None,
    }
    for (kind, sym), want in cases.items():
        got = layer_of(kind, sym)
        assert got == want, f"{sym}: {got!r}, want {want!r}"
    # Half the samples idle: the busy half is the datagram's whole CPU time (1 µs).
    rows = [(50.0, "[k]", "pv_native_safe_halt"), (30.0, "[k]", "_copy_to_iter"),
            (20.0, "[.]", "ringbeat_core::shard::ShardCore<M>::flush")]
    ns, user, kernel = summarise_run(rows, {"datagrams": 1000, "cpu_seconds": 1e-3})
    assert abs(ns["network and memory (kernel)"] - 600) < 1e-6, ns
    assert abs(ns["shard core (user)"] - 400) < 1e-6, ns
    assert (user, kernel) == (20.0, 80.0)
    ns, _, _ = summarise_run(rows, {})
    assert all(v is None for v in ns.values()), "no datagrams: not measured, not zero"
    print("profile_summary: self-test passed")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    else:
        main()
