#!/usr/bin/env python3
"""Helpers for benches/compare.sh (standard library only; not meant to be run by hand).

Subcommands:
  ports N                              print N free TCP ports on 127.0.0.1
  idle HOST PORT USER DB N             open N client connections (trust auth), print READY <ok>
                                       <errors> when done, then hold them until stdin closes
  analyze RUNDIR                       turn one pgbench run into a JSON line (stdout)
  idle-record TARGET BEFORE_KB AFTER_KB N   one idle-memory result as a JSON line
  report RESULTS.jsonl ENV.json PREV.json OUT.json DOC.md
                                       medians, ratios, markdown table, regressions
"""

import glob
import json
import os
import selectors
import socket
import statistics
import struct
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

TARGETS = ["direct", "pgbouncer", "pgward", "pgward_tenant", "pgward_nometrics"]
TARGET_LABEL = {
    "direct": "direct (PostgreSQL)",
    "pgbouncer": "PgBouncer",
    "pgward": "pgward",
    "pgward_tenant": "pgward + tenant",
    "pgward_nometrics": "pgward, no http_listen",
}
# figure -> (label, True if higher is better)
FIGURES = {
    "tps": ("TPS", True),
    "lat_avg_ms": ("avg ms", False),
    "lat_p99_ms": ("p99 ms", False),
    "cpu_ms_per_1k": ("CPU ms / 1k tx", False),
    "rss_kb": ("RSS MB", False),
}


# Figures compared with the previous run (latencies, p99 above all, move too much between runs
# on a shared 2-core machine to be useful there; they stay in the table).
CHANGE_FIGURES = ("tps", "cpu_ms_per_1k", "rss_kb")


# ------------------------------------------------------------------------------------------
def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


# ------------------------------------------------------------------------------------------
def startup_message(user, db):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "idle-opener")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def cmd_idle(host, port, user, db, n):
    """Open n connections, each: StartupMessage, then read until ReadyForQuery ('Z')."""
    n = int(n)
    port = int(port)
    msg = startup_message(user, db)
    sel = selectors.DefaultSelector()
    done, errors, opened = [], 0, 0
    pending = {}  # sock -> buffer
    in_flight_max = 256
    first_error = None
    deadline = time.time() + 300
    while (opened < n or pending) and time.time() < deadline:
        while opened < n and len(pending) < in_flight_max:
            s = socket.socket()
            s.setblocking(True)
            try:
                s.connect((host, port))
                s.sendall(msg)
            except OSError as e:
                errors += 1
                first_error = first_error or str(e)
                s.close()
                opened += 1
                continue
            s.setblocking(False)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
            opened += 1
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                data = b""
                first_error = first_error or str(e)
            if not data:
                errors += 1
                sel.unregister(s)
                del pending[s]
                s.close()
                continue
            buf = pending[s] + data
            # walk complete messages
            pos, ready, failed = 0, False, False
            while len(buf) - pos >= 5:
                tag = buf[pos : pos + 1]
                ln = struct.unpack("!i", buf[pos + 1 : pos + 5])[0]
                if len(buf) - pos < ln + 1:
                    break
                if tag == b"Z":
                    ready = True
                elif tag == b"E":
                    failed = True
                    first_error = first_error or buf[pos + 5 : pos + 1 + ln].replace(b"\0", b" ").decode(errors="replace")
                elif tag == b"R" and struct.unpack("!i", buf[pos + 5 : pos + 9])[0] != 0:
                    failed = True
                    first_error = first_error or "server asked for a password (idle user must be trust)"
                pos += ln + 1
            pending[s] = buf[pos:]
            if ready or failed:
                sel.unregister(s)
                del pending[s]
                if ready and not failed:
                    done.append(s)
                else:
                    errors += 1
                    s.close()
    errors += len(pending)
    print(f"READY {len(done)} {errors} {json.dumps(first_error or '')}", flush=True)
    # hold until stdin closes or we are killed
    try:
        sys.stdin.read()
    except Exception:
        pass
    for s in done:
        s.close()


# ------------------------------------------------------------------------------------------
def parse_pgbench_out(text):
    r = {"tps": None, "processed": None, "failed": None, "aborted_lines": [], "errors": []}
    for line in text.splitlines():
        l = line.strip()
        if l.startswith("tps =") and r["tps"] is None:
            r["tps"] = float(l.split("=")[1].split()[0])
        elif l.startswith("number of transactions actually processed:"):
            r["processed"] = int(l.split(":")[1].split("/")[0].strip())
        elif l.startswith("number of failed transactions:"):
            r["failed"] = int(l.split(":")[1].split()[0])
        elif l.startswith("latency average ="):
            r["pgbench_lat_avg_ms"] = float(l.split("=")[1].split()[0])
        if "aborted" in l.lower() and not l.startswith("number of transactions"):
            r["aborted_lines"].append(l)
        if "error" in l.lower() or "FATAL" in l:
            r["errors"].append(l)
    return r


def cmd_analyze(rundir):
    meta = json.load(open(os.path.join(rundir, "meta.json")))
    out = open(os.path.join(rundir, "pgbench.out"), errors="replace").read()
    p = parse_pgbench_out(out)
    rc = int(open(os.path.join(rundir, "rc")).read().strip() or "1")

    # per-transaction log: client_id tx_no latency_us script_no epoch_s epoch_us
    tx = []  # (end_time, latency_us)
    first_by_client = {}
    log_failed = 0
    for f in glob.glob(os.path.join(rundir, "log*")):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 6:
                    continue
                try:
                    t = int(parts[4]) + int(parts[5]) / 1e6
                except ValueError:
                    continue
                try:
                    lat = int(parts[2])
                except ValueError:
                    log_failed += 1
                    continue
                tx.append((t, lat))
                c = parts[0]
                if c not in first_by_client or t < first_by_client[c]:
                    first_by_client[c] = t
        os.remove(f)
    tx.sort()

    samples = []  # (t, ticks, rss_pages)
    sf = os.path.join(rundir, "samples")
    if os.path.exists(sf):
        for line in open(sf):
            parts = line.split()
            if len(parts) == 3:
                samples.append((float(parts[0]), int(parts[1]), int(parts[2])))

    res = {
        "target": meta["target"],
        "workload": meta["workload"],
        "round": meta["round"],
        "clients": meta["clients"],
        "rc": rc,
        "tps": p["tps"],
        "processed": p["processed"],
        "failed": (p["failed"] or 0) + 0,
        "log_failed": log_failed,
        "aborted": p["aborted_lines"][:3],
        "error_lines": p["errors"][:5],
    }
    res["ok"] = (rc == 0 and not p["aborted_lines"] and (p["failed"] or 0) == 0 and p["tps"] is not None
                 and (p["processed"] or 0) > 0)

    # Steady-state window: from when every client has finished a transaction (+0.5 s) to
    # 0.5 s before the last transaction; CPU and latency are measured over it.
    if tx:
        start = max(first_by_client.values()) + 0.5 if first_by_client else tx[0][0]
        end = tx[-1][0] - 0.5
        w0 = w1 = None
        if samples:
            after = [s for s in samples if s[0] >= start]
            before = [s for s in samples if s[0] <= end]
            if after and before and before[-1][0] - after[0][0] >= 1.0:
                w0, w1 = after[0], before[-1]
            elif len(samples) >= 2:
                w0, w1 = samples[0], samples[-1]
                res["window_note"] = "whole run (no steady window)"
            t0, t1 = (w0[0], w1[0]) if w0 else (start, end)
        else:
            t0, t1 = start, end
            if t1 - t0 < 1.0:
                t0, t1 = tx[0][0], tx[-1][0]
                res["window_note"] = "whole run (no steady window)"
        win = [lat for (t, lat) in tx if t0 < t <= t1]
        if not win:
            win = [lat for (_, lat) in tx]
        win.sort()
        res["window_s"] = round(t1 - t0, 3)
        res["window_tx"] = len(win)
        res["window_tps"] = round(len(win) / (t1 - t0), 1) if t1 > t0 else None
        res["lat_avg_ms"] = round(statistics.fmean(win) / 1000, 3)
        res["lat_p99_ms"] = round(win[min(len(win) - 1, int(0.99 * len(win)))] / 1000, 3)
        if w0 and w1 and len(win) > 0:
            cpu_s = (w1[1] - w0[1]) / CLK_TCK
            res["cpu_s"] = round(cpu_s, 3)
            res["cpu_ms_per_1k"] = round(cpu_s * 1000 / (len(win) / 1000), 2)
            res["rss_kb"] = round(max(s[2] for s in samples) * PAGE / 1024)
    print(json.dumps(res))


def cmd_idle_record(target, before_kb, after_kb, n, errors="0", note=""):
    before_kb, after_kb, n = int(before_kb), int(after_kb), int(n)
    print(
        json.dumps(
            {
                "idle": True,
                "target": target,
                "rss_before_kb": before_kb,
                "rss_after_kb": after_kb,
                "connections": n,
                "errors": int(errors),
                "note": note,
                "bytes_per_client": round((after_kb - before_kb) * 1024 / n) if n else None,
            }
        )
    )


# ------------------------------------------------------------------------------------------
def fmt(v, fig=None):
    if v is None:
        return "—"
    if fig == "rss_kb":
        return f"{v / 1024:.1f}"
    if fig == "tps":
        return f"{v:,.0f}"
    if isinstance(v, float) and v >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def workload_label(w):
    return w.get("label", w["id"])


def cmd_report(results_path, env_path, prev_path, out_path, doc_path):
    env = json.load(open(env_path))
    runs, idles = [], []
    for line in open(results_path):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        (idles if r.get("idle") else runs).append(r)

    workloads = env["workloads"]  # list of {id,label}
    agg = {}  # (workload, target) -> figures
    for w in workloads:
        for t in TARGETS:
            rs = [r for r in runs if r["workload"] == w["id"] and r["target"] == t]
            if not rs:
                continue
            ok = [r for r in rs if r["ok"]]
            a = {"runs": len(rs), "ok_runs": len(ok), "problems": []}
            for r in rs:
                if not r["ok"]:
                    why = []
                    if r["rc"] != 0:
                        why.append(f"pgbench exit {r['rc']}")
                    if r["failed"]:
                        why.append(f"{r['failed']} failed tx")
                    if r["aborted"]:
                        why.append(r["aborted"][0])
                    if r["error_lines"]:
                        why.append(r["error_lines"][0])
                    if not r.get("processed"):
                        why.append("0 transactions processed within the run time")
                    a["problems"].append(f"round {r['round']}: " + "; ".join(why))
            for fig in FIGURES:
                vals = [r.get(fig) for r in ok if r.get(fig) is not None]
                a[fig] = statistics.median(vals) if vals else None
            agg[(w["id"], t)] = a

    idle = {}
    for t in ("pgbouncer", "pgward"):
        rs = [r for r in idles if r["target"] == t and r.get("bytes_per_client") is not None]
        if rs:
            idle[t] = {
                "bytes_per_client": statistics.median(r["bytes_per_client"] for r in rs),
                "connections": rs[-1]["connections"],
                "errors": rs[-1]["errors"],
                "rss_before_kb": rs[-1]["rss_before_kb"],
                "rss_after_kb": rs[-1]["rss_after_kb"],
                "note": rs[-1].get("note", ""),
            }

    out = {
        "env": env,
        "results": {f"{w}|{t}": v for (w, t), v in agg.items()},
        "idle": idle,
        "runs": runs,
    }

    # ---- markdown
    L = []
    L.append(f"Run: {env['date']} — {'**quick run** (' if env['quick'] else 'full run ('}"
             f"{env['rounds']} round(s) × {env['duration']} s per pgbench run, medians over rounds)")
    L.append("")
    L.append("```")
    L.append(env["uname"])
    L.append(f"nproc: {env['nproc']}   CPU: {env['cpu']}")
    L.append(f"{env['postgres']}; {env['pgbouncer']}; pgward {env['pgward_rev']} "
             f"(workers = {env.get('pgward_workers', 0)})")
    L.append("```")
    L.append("")
    L.append("Ratios: **×PgB** = value / PgBouncer's, **×dir** = value / direct's (for TPS higher is "
             "better, for everything else lower is better). CPU and RSS are the pooler process's "
             "(utime+stime over the steady-state window ÷ transactions in it; peak RSS during the run); "
             "not applicable to direct. Latencies are from pgbench's per-transaction log over the same window.")
    L.append("")
    hdr = ["workload", "target", "TPS", "×PgB", "×dir", "avg ms", "×PgB", "×dir", "p99 ms", "×PgB", "×dir",
           "CPU ms/1k tx", "×PgB", "RSS MB", "×PgB", "runs ok"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "---|" * len(hdr))
    problems = []
    for w in workloads:
        pb = agg.get((w["id"], "pgbouncer"), {})
        dr = agg.get((w["id"], "direct"), {})
        for t in TARGETS:
            a = agg.get((w["id"], t))
            if a is None:
                continue
            row = [workload_label(w), TARGET_LABEL[t]]
            for fig in ("tps", "lat_avg_ms", "lat_p99_ms"):
                row += [fmt(a[fig], fig),
                        ratio(a[fig], pb.get(fig)) if t != "pgbouncer" else "",
                        ratio(a[fig], dr.get(fig)) if t != "direct" else ""]
            for fig in ("cpu_ms_per_1k", "rss_kb"):
                row += [fmt(a[fig], fig), ratio(a[fig], pb.get(fig)) if t not in ("pgbouncer", "direct") else ""]
            okcell = f"{a['ok_runs']}/{a['runs']}"
            if a["ok_runs"] < a["runs"]:
                okcell = f"**{okcell}**"
                for pr in a["problems"]:
                    problems.append(f"- {workload_label(w)}, {TARGET_LABEL[t]}: {pr}")
            row.append(okcell)
            L.append("| " + " | ".join(row) + " |")
    L.append("")
    skipped = env.get("skipped", [])
    if skipped:
        L.append("Not run: " + "; ".join(skipped) + ".")
        L.append("")

    L.append(f"**Memory per idle client** ({env['idle_n']:,} idle client connections, trust auth, "
             f"RSS after − RSS before, ÷ connections):")
    L.append("")
    L.append("| pooler | RSS before | RSS with idle clients | connections (errors) | bytes per idle client | ×PgB |")
    L.append("|---|---|---|---|---|---|")
    for t in ("pgbouncer", "pgward"):
        i = idle.get(t)
        if not i:
            L.append(f"| {TARGET_LABEL[t]} | — | — | — | not measured | |")
            continue
        r = ratio(i["bytes_per_client"], idle.get("pgbouncer", {}).get("bytes_per_client")) if t != "pgbouncer" else ""
        L.append(f"| {TARGET_LABEL[t]} | {i['rss_before_kb'] / 1024:.1f} MB | {i['rss_after_kb'] / 1024:.1f} MB | "
                 f"{i['connections']:,} ({i['errors']}) | {i['bytes_per_client']:,.0f} | {r} |")
    L.append("")

    if problems:
        L.append("**Runs that failed** (excluded from the medians above):")
        L.append("")
        L += problems
        L.append("")
    if env.get("pooler_log_notes"):
        L.append("**Pooler log excerpts** (warnings/errors during the run):")
        L.append("")
        L.append("```")
        L += env["pooler_log_notes"]
        L.append("```")
        L.append("")

    # ---- changes vs previous run
    L.append("### Changes vs the previous run (> 5 %)")
    L.append("")
    prev = None
    if prev_path and os.path.exists(prev_path):
        try:
            prev = json.load(open(prev_path))
        except Exception:
            prev = None
    if prev is None:
        L.append("No previous run in bench-results/latest.json to compare with.")
    else:
        regress, improve = [], []
        for key, cur in out["results"].items():
            old = prev.get("results", {}).get(key)
            if not old:
                continue
            w, t = key.split("|")
            if not t.startswith("pgward"):
                continue  # only pgward's figures: direct and PgBouncer changes are machine noise
            wl = next((workload_label(x) for x in workloads if x["id"] == w), w)
            for fig, (label, higher_better) in FIGURES.items():
                if fig not in CHANGE_FIGURES:
                    continue
                a, b = cur.get(fig), old.get(fig)
                if a is None or b is None or b == 0:
                    continue
                ch = (a - b) / b
                if abs(ch) <= 0.05:
                    continue
                worse = (ch < 0) if higher_better else (ch > 0)
                line = f"- {wl}, {TARGET_LABEL[t]}, {label}: {fmt(b, fig)} → {fmt(a, fig)} ({ch * 100:+.0f} %)"
                (regress if worse else improve).append(line)
        for t, cur in idle.items():
            old = prev.get("idle", {}).get(t)
            if old and old.get("bytes_per_client"):
                ch = (cur["bytes_per_client"] - old["bytes_per_client"]) / old["bytes_per_client"]
                if abs(ch) > 0.05:
                    line = (f"- idle clients, {TARGET_LABEL[t]}, bytes per client: {old['bytes_per_client']:,.0f}"
                            f" → {cur['bytes_per_client']:,.0f} ({ch * 100:+.0f} %)")
                    (regress if ch > 0 else improve).append(line)
        pe = prev.get("env", {})
        L.append(f"Previous run: {pe.get('date', '?')} ({'quick' if pe.get('quick') else 'full'}, pgward {pe.get('pgward_rev', '?')}). "
                 "pgward's TPS, CPU per 1,000 transactions, RSS and idle bytes per client. "
                 "Noise between runs on this shared machine is often above 5 % (compare a change with "
                 "what PgBouncer's figure did in the same run): treat single changes with care.")
        L.append("")
        L.append("**Regressions:**")
        L.append("")
        L += regress or ["- none"]
        L.append("")
        L.append("**Improvements:**")
        L.append("")
        L += improve or ["- none"]
    L.append("")

    md = "\n".join(L)
    json.dump(out, open(out_path, "w"), indent=1)

    # ---- write into the doc between the markers
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if os.path.exists(doc_path):
        doc = open(doc_path).read()
    else:
        doc = "# Benchmarks\n\n## Results\n\n" + start + "\n" + end + "\n"
    if start not in doc or end not in doc:
        doc = doc.rstrip() + "\n\n## Results\n\n" + start + "\n" + end + "\n"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    doc = head + start + "\n" + md + "\n" + end + tail
    open(doc_path, "w").write(doc)
    print(md)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "ports": cmd_ports,
        "idle": cmd_idle,
        "analyze": cmd_analyze,
        "idle-record": cmd_idle_record,
        "report": cmd_report,
    }[cmd](*args)


if __name__ == "__main__":
    main()
