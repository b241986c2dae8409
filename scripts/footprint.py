#!/usr/bin/env python3
"""Footprint measurements for scripts/exp-footprint.sh (see there). Each subcommand
prints CSV rows on stdout; everything sends to 127.0.0.1 only and stops by itself.

  idle BIN [RUNNER...]            idle RSS after start: one shard, two shards
  per-device BIN BENCH LEVELS     resident bytes per tracked device at each fill level
  ramp BIN[:BIN2] BENCH DEVICES RATE RUNS
                                  p99 while DEVICES first appear against p99 after
  first-ack BIN                   ms from the server's start to the first ack
  ramp-readme DIR RUNS            results/<date>-ramp/README.md from DIR/ramp.csv
"""
import json, os, signal, socket, struct, subprocess, sys, tempfile, time, urllib.request

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")

def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

class Server:
    def __init__(self, bin, args, runner=(), cpu="0", http=False):
        self.dir = tempfile.mkdtemp(prefix="rb-footprint-")
        self.port = free_port()
        self.stats = os.path.join(self.dir, "stats.json")
        self.http = free_port(socket.SOCK_STREAM) if http else None
        extra = ["--http-listen", f"127.0.0.1:{self.http}"] if http else []
        cmd = ["taskset", "-c", cpu, *runner, bin, "serve", "--listen", f"127.0.0.1:{self.port}",
               "--stats-json", self.stats, "--stats-interval", "0.2", "--quiet", "--run-for", "600",
               *extra, *args]
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stderr=self.log)
        deadline = time.monotonic() + 30
        while True:
            self.log.seek(0)
            if "listening on" in self.log.read():
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"server did not start: {self.log.read()}")
            time.sleep(0.005)

    def pid(self):
        # Under a runner (qemu-user) the emulated process is the runner's own pid.
        return self.proc.pid

    def devices(self):
        time.sleep(0.5)
        with open(self.stats) as f:
            return json.load(f)["devices"]

    def loop_busy(self):
        """The shard's loop-busy histogram from /metrics, (upper bound in µs, cumulative
        iterations) per bucket; read after its next publish (every 100 ms)."""
        time.sleep(0.25)
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        steps = []
        for line in text.splitlines():
            if line.startswith("ringbeat_loop_busy_seconds_bucket{"):
                le = line.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else round(float(le) * 1e6)
                steps.append((bound, int(float(line.rsplit(" ", 1)[1]))))
        if not steps:
            raise RuntimeError("no ringbeat_loop_busy_seconds in /metrics")
        return steps

    def shard_waited_ms(self):
        """Milliseconds shard 0's thread has waited on a run queue, runnable but not
        running (/proc/PID/task/TID/schedstat): time another task had its CPU."""
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{tid}/comm") as f:
                if f.read().strip() == "rb-shard-0":
                    with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                        return int(f.read().split()[1]) / 1e6
        raise RuntimeError("no rb-shard-0 thread")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)

def settle_rss(pid):
    time.sleep(1.0)
    return rss_kib(pid)

def idle(bin, runner):
    print("shards,rss_kib")
    # qemu-user does not emulate SO_ATTACH_REUSEPORT_CBPF (the shards' steering), so
    # under it only one shard runs.
    for cores in (["0"] if runner else ["0", "0,1"]):
        s = Server(bin, ["--cores", cores], runner, cpu="0,1")
        print(f"{len(cores.split(','))},{settle_rss(s.pid())}")
        s.stop()

def load(bench, port, devices, rate, duration, batch, first_id=1, out=None):
    cmd = ["taskset", "-c", "1", bench, "load", "--target", f"127.0.0.1:{port}",
           "--devices", str(devices), "--first-id", str(first_id), "--rate", str(rate),
           "--batch", str(batch), "--duration", str(duration), "--warmup", "0"]
    if out:
        cmd += ["--json", out + ".json", "--hgrm", out + ".hgrm"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if out:
        with open(out + ".json") as f:
            return json.load(f)

def per_device(bin, bench, levels, runner):
    print("devices,rss_before_kib,rss_after_kib,tracked,bytes_per_device")
    for n in levels:
        s = Server(bin, ["--cores", "0"], runner)
        # Warm-up: 20,000 full datagrams (64 frames, 2 KiB) from 1,024 devices cycle
        # every receive buffer end to end and the ack slots, so what grows afterwards
        # is the device state.
        load(bench, s.port, 1024, 1_280_000, 1, 64, first_id=1 << 40)
        before_devices = s.devices()
        before = settle_rss(s.pid())
        # Every one of the n devices sends once or more (interval n / rate ≤ duration).
        rate = max(100_000, min(2_000_000, n))
        load(bench, s.port, n, rate, n / rate + 1, 32)
        tracked = s.devices() - before_devices
        after = settle_rss(s.pid())
        print(f"{n},{before},{after},{tracked},{(after - before) * 1024 / tracked:.1f}")
        s.stop()

def read_hgrm(path):
    """(value_us, cumulative count) steps of a `.hgrm` percentile distribution."""
    steps = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and not line.startswith("#") and fields[0] != "Value":
                steps.append((float(fields[0]), int(fields[2])))
    return steps

def pooled_quantile(runs, q):
    """The q quantile of several runs' samples taken together. Between two printed
    steps of a distribution the samples are counted at the upper step, so the result
    is never below the true pooled quantile by more than one step's width."""
    total = sum(r[-1][1] for r in runs)
    for v in sorted({v for r in runs for v, _ in r}):
        below = sum(max((c for x, c in r if x <= v), default=0) for r in runs)
        if below >= q * total:
            return v
    return max(r[-1][0] for r in runs)

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def busy_window(before, after):
    """Iterations per bucket between two loop-busy readings, cumulative."""
    return [(b, n1 - n0) for (b, n0), (_, n1) in zip(before, after)]

def busy_quantile(window, q):
    """The upper bound (µs) of the bucket holding quantile q of a window's iterations."""
    total = window[-1][1]
    return next(b for b, n in window if n >= q * total)

def busy_max(window):
    """The upper bound (µs) of the bucket holding the window's longest iteration."""
    return next(b for b, n in window if n == window[-1][1])

def fmt_bound(b):
    return "> 25000" if b == float("inf") else str(int(b))

def ramp(bins, bench, devices, rate, runs):
    """Runs alternate between the binaries (so a quiet or a noisy minute of the machine
    falls on all of them); one row per run and binary, then per binary the pooled and
    median rows. Beside the latency seen by the load (from the intended send time), the
    shard's own time per loop iteration in each window (its `loop_busy` histogram, as
    bucket upper bounds): a pause in the table's growth shows there whatever the
    machine's noise does to the end-to-end latency."""
    print("build,run,p99_ramp_us,p99_steady_us,ratio,p50_ramp_us,p50_steady_us,"
          "busy_p99_ramp_us,busy_p99_steady_us,busy_max_ramp_us,busy_max_steady_us,"
          "waited_ramp_ms,waited_steady_ms")
    d = tempfile.mkdtemp(prefix="rb-ramp-")
    got = {b: ([], [], [], [], []) for b in range(len(bins))}
    for r in range(runs):
        for k, bin in enumerate(bins):
            s = Server(bin, ["--cores", "0"], http=True)
            interval = devices / rate
            # The same warm-up as per-device: every receive buffer and ack slot used
            # once (their first-touch page faults are the start's, not the table's
            # growth), from 1,024 devices outside the ramp's ids.
            load(bench, s.port, 1024, 1_280_000, 1, 64, first_id=1 << 40)
            b0, q0 = s.loop_busy(), s.shard_waited_ms()
            # The ramp: every device is new during the first interval.
            a = load(bench, s.port, devices, rate, interval, 32, out=os.path.join(d, f"ramp-{k}-{r}"))
            b1, q1 = s.loop_busy(), s.shard_waited_ms()
            # Steady state: the same devices again, at the same rate, on the same
            # server, after one interval more that lets the last growth finish; a
            # window of the same length as the ramp's.
            load(bench, s.port, devices, rate, interval, 32)
            b2, q2 = s.loop_busy(), s.shard_waited_ms()
            b = load(bench, s.port, devices, rate, interval, 32, out=os.path.join(d, f"steady-{k}-{r}"))
            b3, q3 = s.loop_busy(), s.shard_waited_ms()
            s.stop()
            pa, pb = a["latency_intended"]["p99_us"], b["latency_intended"]["p99_us"]
            wr, ws = busy_window(b0, b1), busy_window(b2, b3)
            ramps, steadies, ratios, busy_r, busy_s = got[k]
            ramps.append(read_hgrm(os.path.join(d, f"ramp-{k}-{r}.hgrm")))
            steadies.append(read_hgrm(os.path.join(d, f"steady-{k}-{r}.hgrm")))
            ratios.append(pa / pb)
            busy_r.append(wr)
            busy_s.append(ws)
            print(f"{k},{r + 1},{pa:.1f},{pb:.1f},{pa / pb:.2f},{a['latency_intended']['p50_us']:.1f},{b['latency_intended']['p50_us']:.1f},"
                  f"{fmt_bound(busy_quantile(wr, 0.99))},{fmt_bound(busy_quantile(ws, 0.99))},{fmt_bound(busy_max(wr))},{fmt_bound(busy_max(ws))},"
                  f"{q1 - q0:.1f},{q3 - q2:.1f}", flush=True)
    # One stall of the machine (a preempted vCPU, a host fault) decides a one-second
    # window's p99, so single runs scatter; the runs' samples taken together and the
    # median of the per-run ratios are what the target is read from.
    for k, (ramps, steadies, ratios, busy_r, busy_s) in got.items():
        pr, ps = pooled_quantile(ramps, 0.99), pooled_quantile(steadies, 0.99)
        sum_w = lambda ws: [(b, sum(w[i][1] for w in ws)) for i, (b, _) in enumerate(ws[0])]
        wr, ws = sum_w(busy_r), sum_w(busy_s)
        print(f"{k},pooled,{pr:.1f},{ps:.1f},{pr / ps:.2f},{pooled_quantile(ramps, 0.5):.1f},{pooled_quantile(steadies, 0.5):.1f},"
              f"{fmt_bound(busy_quantile(wr, 0.99))},{fmt_bound(busy_quantile(ws, 0.99))},{fmt_bound(busy_max(wr))},{fmt_bound(busy_max(ws))},,")
        print(f"{k},median,,,{median(ratios):.2f},,,,,,,,")

def ramp_markdown(rows, build, label):
    """The ramp's table for a results README, from `ramp`'s CSV rows of one build."""
    med = lambda xs: median([float(x) for x in xs])
    r = [x for x in rows if x["build"] == build]
    runs_ = [x for x in r if x["run"].isdigit()]
    pooled = next(x for x in r if x["run"] == "pooled")
    median_ratio = next(x for x in r if x["run"] == "median")["ratio"]
    L = [f"| {label} | run | p99 ramp (µs) | p99 steady (µs) | ramp / steady | shard busy p99 ramp / steady (µs) | longest iteration ramp / steady (µs) | shard waited for its CPU ramp / steady (ms) |",
         "|---|---|---|---|---|---|---|---|"]
    busy = lambda x: f"≤ {x['busy_p99_ramp_us']} / ≤ {x['busy_p99_steady_us']}"
    longest = lambda x: f"≤ {x['busy_max_ramp_us']} / ≤ {x['busy_max_steady_us']}"
    for x in runs_:
        L.append(f"| | {x['run']} | {x['p99_ramp_us']} | {x['p99_steady_us']} | {x['ratio']} | {busy(x)} | {longest(x)} | {x['waited_ramp_ms']} / {x['waited_steady_ms']} |")
    a, b = med(x["p99_ramp_us"] for x in runs_), med(x["p99_steady_us"] for x in runs_)
    L.append(f"| | median of the runs | {a:.1f} | {b:.1f} | {a / b:.2f} (median of the ratios: {median_ratio}) | | | |")
    L.append(f"| | **all runs together** | **{pooled['p99_ramp_us']}** | **{pooled['p99_steady_us']}** | **{pooled['ratio']}** | **{busy(pooled)}** | **{longest(pooled)}** | |")
    L.append("")
    L.append("The shard's columns come from its own loop-busy histogram (`ringbeat_loop_busy_seconds` in /metrics, read before and after each window): the time each loop iteration spent working, as the upper bound of its bucket (10, 25, 50, 100, 250, 500, 1000, 2500, ... µs). They leave out the time between iterations; a pause in the table's growth would show there as long iterations. An iteration is wall time, so it also grows with the backlog it drains after a stall and with any preemption in its middle. The last column is the time shard 0's thread spent runnable but not running in each window (its schedstat; the load's second and the reads on either side, about 1.5 s): when another task has its CPU, what arrives meanwhile waits that long, and at 2M heartbeats a second 10 ms of it is the whole 1% tail.\n")
    return L

def first_ack(bin, runs):
    print("run,ms_to_first_ack")
    for r in range(runs):
        port = free_port()
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(0.001)
        frame = b"RBHB" + struct.pack("<HBBQIHHQ", 1, 1, 1, 1, 1, 0, 0, 0)
        t0 = time.monotonic()
        p = subprocess.Popen(["taskset", "-c", "0", bin, "serve", "--cores", "0", "--listen",
                              f"127.0.0.1:{port}", "--quiet", "--run-for", "5"], stderr=subprocess.DEVNULL)
        while True:
            c.sendto(frame, ("127.0.0.1", port))
            try:
                c.recv(64)
                break
            except (socket.timeout, ConnectionRefusedError):
                if time.monotonic() - t0 > 5:
                    raise RuntimeError("no ack within 5 s")
        print(f"{r + 1},{(time.monotonic() - t0) * 1000:.1f}")
        p.send_signal(signal.SIGTERM)
        p.wait()

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "idle":
        idle(args[0], args[1:])
    elif cmd == "per-device":
        per_device(args[0], args[1], [int(x) for x in args[2].split(",")], args[3:])
    elif cmd == "ramp":
        ramp(args[0].split(":"), args[1], int(args[2]), int(args[3]), int(args[4]))
    elif cmd == "ramp-readme":
        import csv
        out, runs = args[0], int(args[1])
        rows = list(csv.DictReader(open(os.path.join(out, "ramp.csv"))))
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True).stdout.strip()
        L = ["# p99 while 2M devices first appear\n",
             "```sh\nscripts/exp-ramp.sh\n```\n",
             f"git revision {rev}, kernel {os.uname().release}, {os.cpu_count()} CPUs; server on CPU 0 (`--cores 0`, default flags), load on CPU 1.\n",
             f"2M hb/s in 32-heartbeat datagrams: the first second every device is new (the index grows from 1,024 buckets to 3.1M), then one second more of the same devices on the same server (not measured: the last growth finishes), then the steady second, measured. {runs} runs, each with a fresh server; latency from the intended send time.\n"]
        L += ramp_markdown(rows, "0", "this build")
        open(os.path.join(out, "README.md"), "w").write("\n".join(L))
    elif cmd == "first-ack":
        first_ack(args[0], int(args[1]))
    else:
        sys.exit(__doc__)
