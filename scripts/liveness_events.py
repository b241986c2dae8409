#!/usr/bin/env python3
"""Reads a ringbeat events file and reports what a liveness experiment needs: false
transitions among devices that never stopped, and for devices that did, whether each
was reported late and offline and how long after its threshold (time_ms - last_seen_ms
- threshold, both on the server's real-time clock).

usage: liveness_events.py EVENTS --steady FIRST-LAST --silent FIRST-LAST
                          --late-ms MS --offline-ms MS
Prints one JSON object."""
import argparse, json

def span(s):
    a, b = s.split("-")
    return int(a), int(b)

def pct(v, q):
    if not v:
        return None
    v = sorted(v)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]

def main():
    p = argparse.ArgumentParser()
    p.add_argument("events")
    p.add_argument("--steady", type=span, required=True)
    p.add_argument("--silent", type=span, required=True)
    p.add_argument("--late-ms", type=int, required=True)
    p.add_argument("--offline-ms", type=int, required=True)
    a = p.parse_args()
    false_late = false_offline = 0
    late, offline = {}, {}
    with open(a.events) as f:
        for line in f:
            e = json.loads(line)
            d, to = e["device_id"], e["to"]
            silent_for = e["time_ms"] - e["last_seen_ms"]
            if a.steady[0] <= d <= a.steady[1]:
                false_late += to == "late"
                false_offline += to == "offline"
            elif a.silent[0] <= d <= a.silent[1]:
                if to == "late":
                    late.setdefault(d, silent_for - a.late_ms)
                elif to == "offline":
                    offline.setdefault(d, silent_for - a.offline_ms)
    n = a.silent[1] - a.silent[0] + 1
    out = {
        "false_late": false_late,
        "false_offline": false_offline,
        "silent_devices": n,
        "silent_reported_late": len(late),
        "silent_reported_offline": len(offline),
    }
    for name, d in (("late", late), ("offline", offline)):
        v = list(d.values())
        out[f"{name}_delay_ms_p50"] = pct(v, 0.5)
        out[f"{name}_delay_ms_p99"] = pct(v, 0.99)
        out[f"{name}_delay_ms_max"] = max(v) if v else None
    print(json.dumps(out))

if __name__ == "__main__":
    main()
