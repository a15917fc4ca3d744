#!/usr/bin/env python3
"""StreamOtter benchmark suite: the gateway and its peers, side by side, in one go.

Run by `make bench` (which builds the C programs first). Every server runs on loopback,
every run is bounded in time, and the whole suite takes about 10 minutes on 2 cores.

Writes
  bench/results/latest.json     every result, the machine, the versions, the targets
  bench/results/latest.md       the tables (also spliced into BENCHMARKS.md between markers)
  bench/results/*.png           charts
  bench/results/logs/           the servers' stderr

usage: bench/run.py [--bin-dir build/bench] [--streamotter build/bin/streamotter]
                    [--only ingest,fanout,echo,connections,latency] [--quick]
                    [--no-markdown]
"""
import argparse
import collections
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
ALL_WORKLOADS = ("ingest", "fanout", "echo", "connections", "latency")
LOGS = os.path.join(RESULTS, "logs")
PY = sys.executable

# The gateway's settings for every run but the "shipped defaults" latency rows. The
# embedded broker (librdkafka's mock cluster) holds a fetch that finds no data for the full
# fetch.wait.max.ms (500 ms by default) even when records arrive meanwhile; a real broker
# answers as soon as fetch.min.bytes are there. 5 ms keeps the mock from dominating the
# latency of the live feed. Everything else is the gateway's default.
GATEWAY_SETTINGS = ["--set", "kafka.consumer.fetch.wait.max.ms=5"]
# Admission limits (default: 1,000 connections per client address, 100,000 in all) are
# lifted: every connection of the benchmark comes from a handful of loopback addresses.
LIMIT_SETTINGS = ["--set", "limits.max_connections_per_address=1000000", "--set", "limits.max_connections=1000000"]


def log(msg):
    print(msg, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A server we started: waits for its ready line, keeps its pid, stops it."""

    def __init__(self, name, cmd, ready=r"listening: ", timeout=60, env=None):
        self.name = name
        os.makedirs(LOGS, exist_ok=True)
        self.errf = open(os.path.join(LOGS, f"{name}.log"), "w")
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.errf, text=True,
                                  start_new_session=True, env=env)
        self.lines = []
        deadline = time.time() + timeout
        self.match = None
        while time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip())
            m = re.search(ready, line)
            if m:
                self.match = m
                break
        if not self.match:
            self.stop()
            raise RuntimeError(f"{name} did not start: {' '.join(cmd)}; output: {self.lines[-5:]}; "
                               f"see {self.errf.name}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.p.stdout:
            pass

    @property
    def pid(self):
        return self.p.pid

    def line_value(self, pattern):
        for line in self.lines:
            m = re.search(pattern, line)
            if m:
                return m.group(1)
        return None

    def stop(self, timeout=15):
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.p.pid, signal.SIGKILL)
                self.p.wait()
            except ProcessLookupError:
                pass
        self.errf.close()


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class Suite:
    def __init__(self, args):
        self.args = args
        self.bin = args.bin_dir
        self.sot = args.streamotter
        self.results = []
        self.errors = []
        self.quick = args.quick
        self.duration = 2.0 if args.quick else 4.0
        self.warmup = 0.5 if args.quick else 1.0
        # Through Kafka the first publishes wait for metadata and the idempotent producer's
        # id (about 0.7 s here) and the backlog then takes a moment to drain: warm up longer.
        self.kafka_warmup = 1.0 if args.quick else 2.0
        self.open_loop_warmup = 1.5 if args.quick else 3.0

    # ---------------------------------------------------------------- processes

    def broker(self, topics):
        cmd = [self.sot, "dev-kafka"]
        for t in topics:
            cmd += ["--topic", t]
        p = Proc("dev-kafka", cmd, ready=r"bootstrap\.servers=(\S+)")
        p.bootstrap = p.match.group(1)
        return p

    def gateway(self, bootstrap, engines=1, extra=(), name=None, settings=GATEWAY_SETTINGS, port=0):
        cmd = [self.sot, "serve", "--listen", f"127.0.0.1:{port}", "--brokers", bootstrap,
               "--engines", str(engines)] + LIMIT_SETTINGS + list(settings) + list(extra)
        p = Proc(name or f"streamotter-e{engines}", cmd, ready=r"listening: ws://[^:]+:(\d+)/")
        p.port = int(p.match.group(1))
        return p

    def echo_gateway(self, engines=1):
        cmd = [self.sot, "serve", "--echo", "--listen", "127.0.0.1:0", "--engines", str(engines)] + LIMIT_SETTINGS
        p = Proc(f"streamotter-echo-e{engines}", cmd, ready=r"listening: ws://[^:]+:(\d+)/")
        p.port = int(p.match.group(1))
        return p

    def peer(self, name, cmd, port):
        p = Proc(name, cmd)
        p.port = port
        return p

    # ---------------------------------------------------------------- load generator

    def loadgen(self, workload, system, args, pids, extra_fields=None, warmup=None):
        out = os.path.join(RESULTS, ".run.jsonl")
        if os.path.exists(out):
            os.remove(out)
        cmd = [os.path.join(self.bin, "loadgen"), "--system", system, "--results", out,
               "--pids", ",".join(str(p) for p in pids)] + [str(a) for a in args]
        if "--duration" not in args:
            cmd += ["--duration", str(self.duration), "--warmup", str(warmup if warmup is not None else self.warmup)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
        line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        log("  " + line)
        if r.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"loadgen failed ({r.returncode}): {r.stderr[-500:]}")
        with open(out) as f:
            res = json.loads(f.readlines()[-1])
        res["workload"] = workload
        res["loadgen_stderr"] = r.stderr.strip()[-300:]
        if extra_fields:
            res.update(extra_fields)
        self.results.append(res)
        return res

    def guarded(self, what, fn, *a):
        try:
            return fn(*a)
        except Exception as e:  # one failing peer must not stop the suite
            msg = f"{what}: {e}"
            log("  ERROR " + msg)
            self.errors.append(msg)
            return None

    # ---------------------------------------------------------------- workloads

    def w_ingest(self):
        log("== ingest: N clients publish through the gateway to Kafka; acked msgs/s, ack latency")
        window = 64
        for size in (64, 1024):
            broker = self.broker(["ingest:3"])
            try:
                bs = broker.bootstrap
                for engines in (1, 2):
                    def run_gateway():
                        gw = self.gateway(bs, engines=engines)
                        try:
                            for n in (1, 10, 100):
                                self.loadgen("ingest", f"streamotter ({engines} engine{'s' if engines > 1 else ''})",
                                             ["--mode", "ingest", "--port", gw.port, "--channel", "ingest", "--conns", n,
                                              "--window", window, "--size", size],
                                             [gw.pid, broker.pid], {"engines": engines}, warmup=self.kafka_warmup)
                        finally:
                            gw.stop()
                    self.guarded(f"ingest streamotter e{engines} {size}", run_gateway)

                def run_bridge():
                    port = free_port()
                    pb = self.peer("py-bridge", [PY, os.path.join(HERE, "peers", "py_bridge.py"), str(port), bs], port)
                    try:
                        for n in (1, 10, 100):
                            self.loadgen("ingest", "python bridge", ["--mode", "ingest", "--port", port, "--channel",
                                         "ingest", "--conns", n, "--window", window, "--size", size],
                                         [pb.pid, broker.pid], warmup=self.kafka_warmup)
                    finally:
                        pb.stop()
                self.guarded(f"ingest python bridge {size}", run_bridge)

                def run_rdkafka():
                    out = os.path.join(RESULTS, ".run.jsonl")
                    if os.path.exists(out):
                        os.remove(out)
                    cmd = [os.path.join(self.bin, "rdkafka_produce"), "--brokers", bs, "--topic", "ingest",
                           "--size", str(size), "--window", str(100 * window), "--id-header", "--duration", str(self.duration),
                           "--warmup", str(self.kafka_warmup), "--system", "librdkafka alone", "--results", out]
                    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
                    log("  " + r.stdout.strip())
                    with open(out) as f:
                        res = json.loads(f.readlines()[-1])
                    res["workload"] = "ingest"
                    self.results.append(res)
                self.guarded(f"ingest librdkafka {size}", run_rdkafka)
            finally:
                broker.stop()

    def w_fanout(self):
        log("== fan-out: one producer, N subscribers; deliveries/s, produce-to-delivery latency")
        size = 64
        # The producer keeps W records not yet delivered to every subscriber. The best W
        # differs by system (uWebSockets batches what arrives in one loop turn, the gateway
        # what one Kafka fetch returns), so each system gets the same three windows and
        # the tables use its best.
        windows = {1000: (4, 16, 64, 256), 10000: (4, 16, 64)}
        for subs in (1000, 10000):
            for engines in (1, 2):
                for window in windows[subs]:
                    def run_gateway():
                        # A fresh broker for every run: the mock broker scans a partition's
                        # whole log on every fetch (see BENCHMARKS.md), so a log left by the
                        # previous run would slow this one down.
                        broker = self.broker(["fanout:3"])
                        gw = None
                        try:
                            gw = self.gateway(broker.bootstrap, engines=engines)
                            self.loadgen("fanout", f"streamotter ({engines} engine{'s' if engines > 1 else ''})",
                                         ["--mode", "fanout", "--port", gw.port, "--channel", "fanout", "--subs", subs,
                                          "--pubs", 1, "--window", window, "--size", size, "--concurrency", 512,
                                          "--connect-timeout", 240],
                                         [gw.pid, broker.pid], {"engines": engines}, warmup=self.kafka_warmup)
                        finally:
                            if gw:
                                gw.stop()
                            broker.stop()
                    self.guarded(f"fanout streamotter e{engines} {subs} w{window}", run_gateway)

            def run_uws():
                port = free_port()
                sp = self.peer("socketify", [PY, os.path.join(HERE, "peers", "socketify_server.py"), str(port)], port)
                try:
                    for window in windows[subs]:
                        self.loadgen("fanout", "uWebSockets (socketify)",
                                     ["--mode", "fanout", "--proto", "raw", "--port", port, "--sub-path", "/sub",
                                      "--pub-path", "/pub", "--subs", subs, "--pubs", 1, "--window", window,
                                      "--size", size, "--concurrency", 512], [sp.pid])
                finally:
                    sp.stop()
            self.guarded(f"fanout socketify {subs}", run_uws)

    def echo_servers(self):
        b = self.bin
        return [
            ("streamotter (1 engine)", lambda: self.echo_gateway(1), "raw"),  # --echo: no Kafka
            ("streamotter (2 engines)", lambda: self.echo_gateway(2), "raw"),
            ("plain TCP echo (libuv)", lambda: self._port_peer("tcp-echo", [os.path.join(b, "tcp_echo")]), "tcp"),
            ("picows", lambda: self._port_peer("picows", [PY, os.path.join(HERE, "peers", "picows_echo.py")]), "raw"),
            ("uWebSockets (socketify)", lambda: self._port_peer("socketify", [PY, os.path.join(HERE, "peers", "socketify_server.py")]), "raw"),
            ("libwebsockets", lambda: self._port_peer("lws-echo", [os.path.join(b, "lws_echo")]), "raw"),
        ]

    def _port_peer(self, name, cmd):
        port = free_port()
        return self.peer(name, cmd + [str(port)], port)

    def w_echo(self):
        log("== echo: round trips over WebSocket (64 B text messages)")
        # Every server runs at once (idle ones cost nothing) and the runs go round robin,
        # one run per server in turn: the machine's speed drifts by ±10% over minutes, and
        # taking each server's runs back to back would hand that drift to the ratios.
        servers = []
        for system, start, proto in self.echo_servers():
            try:
                servers.append((system, start(), proto))
            except Exception as e:  # one failing peer must not stop the suite
                log(f"  ERROR echo {system}: {e}")
                self.errors.append(f"echo {system}: {e}")
        try:
            for conns, window in ((1, 1), (100, 1), (100, 16)):
                # Round trips are the most sensitive to the neighbours' load: the window-1
                # rows keep the median of five rounds.
                reps = 5 if window == 1 and not self.quick else 1
                runs = {system: [] for system, _, _ in servers}
                for _ in range(reps):
                    for system, srv, proto in servers:
                        res = self.guarded(f"echo {system} {conns}x{window}", self.loadgen, "echo", system,
                                           ["--mode", "echo", "--proto", proto, "--port", srv.port, "--conns", conns,
                                            "--window", window, "--size", 64], [srv.pid])
                        if res:
                            runs[system].append(res)
                for rs in runs.values():
                    if len(rs) > 1:
                        rs.sort(key=lambda x: x["rate"])
                        med = rs[len(rs) // 2]
                        med["rates_all"] = [x["rate"] for x in rs]
                        for x in rs:
                            if x is not med:
                                self.results.remove(x)
        finally:
            for _, srv, _ in servers:
                srv.stop()

    def w_connections(self):
        log("== connections: idle WebSockets held open; gateway RSS per connection, connect rate")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        per_proc = max(1000, hard - 1000)
        srcs = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4"
        for total in (10000, 50000):
            def run():
                broker = self.broker(["idle:1"])
                gws, lgs = [], []
                try:
                    # One process holds at most RLIMIT_NOFILE sockets: split the connections
                    # over several gateway processes (and load generators) when it is lower
                    # than the count. Each gateway process is a complete gateway.
                    k = math.ceil(total / per_proc)
                    for i in range(k):
                        gws.append(self.gateway(broker.bootstrap, engines=1, name=f"streamotter-idle-{i}"))
                    time.sleep(1.0)
                    base = {g.pid: rss_kb(g.pid) for g in gws}
                    t0 = time.time()
                    shares = [total // k + (1 if i < total % k else 0) for i in range(k)]
                    for i, n in enumerate(shares):
                        cmd = [os.path.join(self.bin, "loadgen"), "--mode", "connections", "--proto", "sot",
                               "--port", str(gws[i].port), "--conns", str(n), "--src", srcs, "--concurrency", "256",
                               "--hold-stdin", "--system", "streamotter", "--connect-timeout", "120"]
                        lgs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True))
                    readies = []
                    for p in lgs:
                        line = p.stdout.readline()
                        m = re.match(r"READY (\{.*\})", line or "")
                        if not m:
                            raise RuntimeError(f"loadgen did not get ready: {line!r} {p.stderr.read()[-300:]}")
                        readies.append(json.loads(m.group(1)))
                    wall = time.time() - t0
                    time.sleep(2.0)
                    after = {g.pid: rss_kb(g.pid) for g in gws}
                    ready = sum(r["ready"] for r in readies)
                    failed = sum(r["failed"] for r in readies)
                    connect_s = max(r["connect_s"] for r in readies)
                    delta = sum(after[p] - base[p] for p in base)
                    res = {
                        "workload": "connections", "mode": "connections", "system": "streamotter",
                        "conns": total, "ready": ready, "failed": failed, "gateway_processes": k,
                        "fd_limit": hard, "connect_s": connect_s, "connect_rate": ready / connect_s if connect_s else 0,
                        "rss_base_kb": sum(base.values()), "rss_kb": sum(after.values()),
                        "rss_per_conn_bytes": delta * 1024 / ready if ready else 0,
                        "loadgen_cpu_s": sum(r["loadgen_cpu_s"] for r in readies),
                        "loadgen_cpu_pct": 100 * sum(r["loadgen_cpu_s"] for r in readies) / connect_s if connect_s else 0,
                        "wall_s": wall,
                    }
                    log(f"  streamotter connections={total} open={ready} failed={failed} processes={k} "
                        f"connect={connect_s:.1f}s ({res['connect_rate']:.0f}/s) rss {res['rss_base_kb']}->{res['rss_kb']} KiB "
                        f"= {res['rss_per_conn_bytes']:.0f} B/connection  loadgen_cpu={res['loadgen_cpu_pct']:.0f}%")
                    self.results.append(res)
                finally:
                    for p in lgs:
                        try:
                            p.stdin.close()
                            p.wait(30)
                        except Exception:
                            p.kill()
                    for g in gws:
                        g.stop()
                    broker.stop()
            self.guarded(f"connections {total}", run)
        # The same for the WebSocket peers at 10,000, for scale (echo servers, no Kafka).
        for system, start, proto in self.echo_servers():
            if proto != "raw" or "2 engines" in system:
                continue

            def run_peer():
                srv = start()
                try:
                    time.sleep(0.5)
                    base = rss_kb(srv.pid)
                    res = self.loadgen("connections", system.replace("(1 engine)", "--echo"), ["--mode", "connections", "--proto", "raw", "--port",
                                       srv.port, "--conns", 10000, "--src", srcs, "--concurrency", 256, "--hold", 1],
                                       [srv.pid])
                    after = res["server"][0]["rss_kb"]
                    res["rss_base_kb"] = base
                    res["rss_kb"] = after
                    res["rss_per_conn_bytes"] = (after - base) * 1024 / res["ready"] if res["ready"] else 0
                    res["echo_server"] = True
                    log(f"    rss {base}->{after} KiB = {res['rss_per_conn_bytes']:.0f} B/connection")
                finally:
                    srv.stop()
            self.guarded(f"connections {system}", run_peer)

    def w_latency(self):
        log("== latency under load: publish -> Kafka -> delivery at 10/50/90% of the measured maximum")
        pubs, subs, size = 10, 10, 64
        system = "streamotter (1 engine)"

        def point(label, extra, fields, settings=GATEWAY_SETTINGS, name=None):
            # A fresh broker and gateway for every point (the mock broker's fetch cost grows
            # with the partition log, see BENCHMARKS.md).
            broker = self.broker(["lat:3"])
            gw = None
            try:
                gw = self.gateway(broker.bootstrap, engines=1, settings=settings, name=name)
                if "--rate" in extra:
                    # Open loop: the first publishes of a fresh gateway wait ~0.7 s for
                    # metadata and the idempotent producer id. At 150 k records/s that
                    # backlog is more than the mock broker keeps per partition (about a
                    # second at that rate), so subscribers would start at positions it has
                    # already dropped (offset_out_of_range; a run of 2026-12-04 at 90% lost
                    # every delivery that way). A second at a low rate first, not recorded.
                    self.loadgen("latency-prewarm", label, ["--mode", "fanout", "--port", gw.port, "--channel", "lat",
                                                            "--subs", 1, "--pubs", 1, "--size", size, "--rate", 500,
                                                            "--duration", 1, "--warmup", 0.5],
                                 [gw.pid, broker.pid])
                    self.results.pop()
                r = self.loadgen("latency", label, ["--mode", "fanout", "--port", gw.port, "--channel", "lat",
                                                    "--subs", subs, "--pubs", pubs, "--size", size] + extra,
                                 [gw.pid, broker.pid], fields,
                                 warmup=self.open_loop_warmup if "--rate" in extra else self.kafka_warmup)
                r["records_per_s"] = r["rate"] / subs
                return r
            finally:
                if gw:
                    gw.stop()
                broker.stop()

        mx = self.guarded("latency max", point, system, ["--window", 2000], {"load_pct": 100, "config": "bench"})
        if not mx:
            return
        max_rate = mx["records_per_s"]
        # A fixed low rate, the same for the gateway and the Python bridge.
        low = 1000
        self.guarded("latency low", point, system, ["--rate", low],
                     {"load_pct": round(100 * low / max_rate, 1), "config": "bench", "max_records_per_s": max_rate})

        def bridge_point():
            broker = self.broker(["lat:3"])
            pb = None
            try:
                port = free_port()
                pb = self.peer("py-bridge", [PY, os.path.join(HERE, "peers", "py_bridge.py"), str(port), broker.bootstrap], port)
                r = self.loadgen("latency", "python bridge", ["--mode", "fanout", "--port", port, "--channel", "lat",
                                 "--subs", subs, "--pubs", pubs, "--size", size, "--rate", low], [pb.pid, broker.pid],
                                 {"load_pct": round(100 * low / max_rate, 1), "config": "peer"}, warmup=self.open_loop_warmup)
                r["records_per_s"] = r["rate"] / subs
            finally:
                if pb:
                    pb.stop()
                broker.stop()
        self.guarded("latency python bridge", bridge_point)
        for pct in (10, 50, 90):
            self.guarded(f"latency {pct}%", point, system, ["--rate", round(max_rate * pct / 100)],
                         {"load_pct": pct, "config": "bench", "max_records_per_s": max_rate})
        # The shipped defaults (live consumer fetch.wait.max.ms=500 on the mock broker) at
        # 50%, to show what that setting does here.
        self.guarded("latency defaults", point, system + ", shipped defaults", ["--rate", round(max_rate * 0.5)],
                     {"load_pct": 50, "config": "defaults", "max_records_per_s": max_rate}, [], "streamotter-defaults")
        # Every delivery from a fetch (gateway.deliver_on_ack=false): what subscribers see of
        # records that other producers (kcat, other gateways) write.
        self.guarded("latency fetch path", point, system + ", deliveries from fetches only", ["--rate", round(max_rate * 0.5)],
                     {"load_pct": 50, "config": "fetch", "max_records_per_s": max_rate},
                     GATEWAY_SETTINGS + ["--set", "gateway.deliver_on_ack=false"], "streamotter-fetch")


# -------------------------------------------------------------------- machine, versions

def machine_info():
    info = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["loadavg_start"] = open("/proc/loadavg").read().split()[:3]
    info["fd_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)
    return info


def versions(sot):
    v = {}
    try:
        v["streamotter"] = subprocess.run([sot, "version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        pass
    try:
        v["git"] = os.environ.get("STREAMOTTER_REV") or subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        pass
    for pkg in ("librdkafka1", "libuv1", "libwebsockets17"):
        try:
            v[pkg] = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
        except Exception:
            pass
    for mod in ("picows", "socketify", "websockets", "confluent_kafka", "uvloop", "matplotlib"):
        try:
            from importlib.metadata import version
            v[mod] = version(mod.replace("_", "-"))
        except Exception:
            v[mod] = "missing"
    return v


# -------------------------------------------------------------------- tables

def fmt_rate(x):
    if x is None:
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def fmt_us(x):
    if x is None or x == 0:
        return "–"
    if x >= 10000:
        return f"{x / 1000:.0f} ms"
    if x >= 1000:
        return f"{x / 1000:.1f} ms"
    return f"{x:.0f} µs"


def ratio(a, b):
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def server_cpu(r, i=0):
    s = r.get("server") or []
    if len(s) > i and s[i].get("cpu_pct", -1) >= 0:
        return f"{s[i]['cpu_pct']:.0f}%"
    return "–"


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(out)


def find(results, **kw):
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def best_of(results, **kw):
    cands = [r for r in results if all(r.get(k) == v for k, v in kw.items())]
    return max(cands, key=lambda r: r.get("rate", 0)) if cands else None


def best_gateway(results, **kw):
    cands = [r for r in results if r["system"].startswith("streamotter (") and all(r.get(k) == v for k, v in kw.items())]
    return max(cands, key=lambda r: r.get("rate", 0)) if cands else None


def tables(results):
    md = []
    # Ingest
    ing = [r for r in results if r["workload"] == "ingest"]
    if ing:
        md.append("### Ingest: WebSocket publish → Kafka ack\n")
        md.append("Acked messages/s over the measured window; ack latency from send to ack; window 64 "
                  "unacknowledged publishes per connection (librdkafka alone: 6,400 outstanding, the same as "
                  "100 connections). CPU: the server process (all its threads) / the broker / the load generator.\n")
        for size in (64, 1024):
            rows = []
            ceiling = find(ing, system="librdkafka alone", size=size)
            for r in [x for x in ing if x["size"] == size]:
                bridge = find(ing, system="python bridge", size=size, conns=r["conns"])
                is_rk = r["system"] == "librdkafka alone"
                rows.append([r["system"], "–" if is_rk else r["conns"], fmt_rate(r["rate"]), fmt_us(r["p50_us"]),
                             fmt_us(r["p99_us"]), fmt_us(r["p999_us"]),
                             "–" if is_rk else ratio(r["rate"], ceiling and ceiling["rate"]),
                             "–" if is_rk or r["system"] == "python bridge" else ratio(r["rate"], bridge and bridge["rate"]),
                             server_cpu(r), server_cpu(r, 1) if not is_rk else "–",
                             f"{r['loadgen_cpu_pct']:.0f}%" if r.get("loadgen_cpu_pct", -1) >= 0 else "–"])
            md.append(f"**{size} B values**\n")
            md.append(table(["system", "conns", "acked msg/s", "p50", "p99", "p99.9", "vs librdkafka",
                             "vs Python bridge", "server CPU", "broker CPU", "loadgen CPU"], rows))
            md.append("")
    # Fan-out
    fo = [r for r in results if r["workload"] == "fanout"]
    if fo:
        md.append("### Fan-out: one producer, N subscribers (64 B records)\n")
        md.append("Deliveries/s to all subscribers; latency from the producer's send to each delivery. "
                  "StreamOtter goes through Kafka (publish → broker → consumer → fan-out); uWebSockets "
                  "publishes in memory. Subscribe rate: connections opened and subscribed per second.\n")
        rows = []
        for r in fo:
            uws = best_of(fo, system="uWebSockets (socketify)", subs=r["subs"])
            best = best_of(fo, system=r["system"], subs=r["subs"])
            rows.append([("**" + r["system"] + "**") if r is best else r["system"], f"{r['subs']:,}", r["window"],
                         fmt_rate(r["rate"]), fmt_us(r["p50_us"]), fmt_us(r["p99_us"]),
                         ratio(r["rate"], uws and uws["rate"]),
                         f"{r['connect_rate']:.0f}/s", r.get("lost", 0), server_cpu(r), server_cpu(r, 1),
                         f"{r['loadgen_cpu_pct']:.0f}%"])
        md.append(table(["system", "subscribers", "window", "deliveries/s", "p50", "p99", "vs best uWebSockets",
                         "subscribe rate", "lost", "server CPU", "broker CPU", "loadgen CPU"], rows))
        md.append("\nBold: the system's best window, used for the target.")
        md.append("")
    # Echo
    ec = [r for r in results if r["workload"] == "echo"]
    if ec:
        md.append("### Echo: WebSocket round trips (64 B text)\n")
        reps = max((len(r.get("rates_all") or []) for r in ec), default=0)
        md.append("Window 1 = strict round trips (send, wait for the echo); window 16 = pipelined. The plain "
                  "TCP echo runs the same bytes without WebSocket framing (the transport ceiling). " +
                  (f"Window-1 rows: the median of {reps} runs, with the lowest and highest in brackets; the "
                   "servers take turns, one run each per round.\n" if reps > 1 else
                   "One run per row (a --quick run; a full run keeps the median of five rounds).\n"))
        rows = []
        for r in ec:
            pic = find(ec, system="picows", conns=r["conns"], window=r["window"])
            lws = find(ec, system="libwebsockets", conns=r["conns"], window=r["window"])
            tcp = find(ec, system="plain TCP echo (libuv)", conns=r["conns"], window=r["window"])
            spread = ("–".join(fmt_rate(x) for x in (min(r["rates_all"]), max(r["rates_all"])))
                      if r.get("rates_all") else "")
            rows.append([r["system"], r["conns"], r["window"], fmt_rate(r["rate"]) + (f" ({spread})" if spread else ""),
                         fmt_us(r["p50_us"]),
                         fmt_us(r["p99_us"]), ratio(r["rate"], pic and pic["rate"]), ratio(r["rate"], lws and lws["rate"]),
                         ratio(r["rate"], tcp and tcp["rate"]), server_cpu(r), f"{r['loadgen_cpu_pct']:.0f}%"])
        md.append(table(["server", "conns", "window", "msg/s", "p50 RTT", "p99 RTT", "vs picows",
                         "vs libwebsockets", "vs TCP echo", "server CPU", "loadgen CPU"], rows))
        md.append("")
    # Connections
    cn = [r for r in results if r["workload"] == "connections"]
    if cn:
        md.append("### Idle connections\n")
        md.append("RSS growth of the server process(es) divided by the connections held; connect rate = "
                  "TCP connect + WebSocket handshake. StreamOtter runs as the Kafka gateway; the peers as "
                  "echo servers.\n")
        rows = []
        for r in cn:
            rows.append([r["system"], f"{r['conns']:,}", f"{r['ready']:,}", r.get("gateway_processes", 1),
                         f"{r['rss_base_kb'] / 1024:.1f} → {r['rss_kb'] / 1024:.1f} MiB",
                         f"{r['rss_per_conn_bytes'] / 1024:.2f} KiB", f"{r['connect_rate']:.0f}/s",
                         f"{r.get('loadgen_cpu_pct', 0):.0f}%"])
        md.append(table(["server", "connections", "open", "processes", "RSS", "RSS per connection",
                         "connect rate", "loadgen CPU"], rows))
        md.append("")
    # Latency
    la = [r for r in results if r["workload"] == "latency"]
    if la:
        md.append("### Latency under load: publish → Kafka → delivery (10 publishers, 10 subscribers, 64 B)\n")
        md.append("Load is a fraction of the maximum measured first (closed loop). Publishers send at a fixed "
                  "rate; each record carries its scheduled send time, so queueing delay counts (no coordinated "
                  "omission).\n")
        rows = []
        for r in la:
            rows.append([r["system"], f"{r['load_pct']:g}%", fmt_rate(r.get("records_per_s")), fmt_rate(r["rate"]),
                         fmt_us(r["p50_us"]), fmt_us(r["p99_us"]), fmt_us(r["p999_us"]), fmt_us(r.get("ack_p50_us")),
                         fmt_us(r.get("ack_p99_us")), server_cpu(r), server_cpu(r, 1), f"{r['loadgen_cpu_pct']:.0f}%"])
        md.append(table(["system", "load", "records/s", "deliveries/s", "delivery p50", "delivery p99",
                         "delivery p99.9", "ack p50", "ack p99", "server CPU", "broker CPU", "loadgen CPU"], rows))
        md.append("")
    return "\n".join(md)


def targets(results):
    out = []

    def add(name, target, value, met, note=""):
        out.append({"target": name, "goal": target, "measured": value, "met": met, "note": note})

    for size in (64, 1024):
        g = best_gateway([r for r in results if r["workload"] == "ingest"], size=size, conns=100)
        rk = find(results, workload="ingest", system="librdkafka alone", size=size)
        br = find(results, workload="ingest", system="python bridge", size=size, conns=100)
        if g and rk:
            x = g["rate"] / rk["rate"]
            add(f"Ingest {size} B vs librdkafka alone", "≥ 0.8×", f"{x:.2f}× ({fmt_rate(g['rate'])} vs {fmt_rate(rk['rate'])} msg/s, {g['system']})", x >= 0.8)
        if g and br:
            x = g["rate"] / br["rate"]
            add(f"Ingest {size} B vs Python bridge", "≥ 5×", f"{x:.1f}× ({fmt_rate(g['rate'])} vs {fmt_rate(br['rate'])} msg/s)", x >= 5)
    for subs in (1000, 10000):
        g = best_gateway([r for r in results if r["workload"] == "fanout"], subs=subs)
        u = best_of(results, workload="fanout", system="uWebSockets (socketify)", subs=subs)
        if g and u:
            x = g["rate"] / u["rate"]
            add(f"Fan-out to {subs:,} subscribers vs uWebSockets", "≥ 1.0×", f"{x:.2f}× ({fmt_rate(g['rate'])} vs {fmt_rate(u['rate'])} deliveries/s, {g['system']})", x >= 1.0)
    for conns in (1, 100):
        g = best_gateway([r for r in results if r["workload"] == "echo"], conns=conns, window=1)
        for peer in ("picows", "libwebsockets"):
            p = find(results, workload="echo", system=peer, conns=conns, window=1)
            if g and p:
                x = g["rate"] / p["rate"]
                add(f"Echo, {conns} connection{'s' if conns > 1 else ''}, vs {peer}", "> 1.0×", f"{x:.2f}× ({fmt_rate(g['rate'])} vs {fmt_rate(p['rate'])} msg/s)", x > 1.0)
    c = find(results, workload="connections", system="streamotter", conns=50000)
    if c:
        kib = c["rss_per_conn_bytes"] / 1024
        add("Gateway RSS per idle connection at 50,000", "≤ 4 KiB", f"{kib:.2f} KiB ({c['ready']:,} open, {c['gateway_processes']} process(es))", kib <= 4 and c["ready"] >= 50000)
    l50 = find(results, workload="latency", load_pct=50, config="bench")
    if l50:
        ms = l50["p99_us"] / 1000
        add("p99 publish-to-delivery at 50% load", "< 10 ms", f"{ms:.1f} ms ({fmt_rate(l50.get('records_per_s'))} records/s)", ms < 10,
            "fetch.wait.max.ms=5 on the mock broker")
    d50 = find(results, workload="latency", load_pct=50, config="defaults")
    if d50:
        ms = d50["p99_us"] / 1000
        add("p99 publish-to-delivery at 50% load, shipped defaults", "< 10 ms", f"{ms:.1f} ms", ms < 10,
            "live consumer fetch.wait.max.ms=500 (librdkafka default) on the mock broker")
    f50 = find(results, workload="latency", load_pct=50, config="fetch")
    if f50:
        ms = f50["p99_us"] / 1000
        add("p99 publish-to-delivery at 50% load, deliveries from fetches only", "< 10 ms", f"{ms:.1f} ms", ms < 10,
            "gateway.deliver_on_ack=false: the path of records written by other producers")
    return out


def targets_md(ts):
    rows = [[t["target"], t["goal"], t["measured"], "met" if t["met"] else "**not met**"] for t in ts]
    return table(["target", "goal", "measured", ""], rows)


# -------------------------------------------------------------------- charts

def charts(results):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["matplotlib missing: no charts"]
    made = []
    colors = {"streamotter (1 engine)": "#1f77b4", "streamotter (2 engines)": "#17becf", "python bridge": "#d62728",
              "librdkafka alone": "#7f7f7f", "picows": "#ff7f0e", "uWebSockets (socketify)": "#2ca02c",
              "libwebsockets": "#9467bd", "plain TCP echo (libuv)": "#7f7f7f"}

    # Throughput against connections: ingest (per size), echo, fan-out.
    fig, grid = plt.subplots(2, 2, figsize=(13, 9.5))
    axes = grid.flatten()
    for ax, size in zip(axes[:2], (64, 1024)):
        ing = [r for r in results if r["workload"] == "ingest" and r["size"] == size]
        for system in ("streamotter (1 engine)", "streamotter (2 engines)", "python bridge"):
            pts = sorted((r["conns"], r["rate"]) for r in ing if r["system"] == system)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=system, color=colors[system])
        rk = find(ing, system="librdkafka alone")
        if rk:
            ax.axhline(rk["rate"], ls="--", color=colors["librdkafka alone"], label="librdkafka alone (ceiling)")
            ax.axhline(rk["rate"] * 0.8, ls=":", color="#bbbbbb", label="target: 0.8× librdkafka")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([1, 10, 100])
        ax.set_xticklabels(["1", "10", "100"])
        ax.set_xlabel("WebSocket connections")
        ax.set_ylabel("acked messages/s")
        ax.set_title(f"Ingest, {size} B values")
        ax.grid(True, which="both", alpha=0.3)
        if ing:
            ax.legend(fontsize=8)
    ax = axes[2]
    ec = [r for r in results if r["workload"] == "echo" and r["window"] == 1]
    for system in colors:
        pts = sorted((r["conns"], r["rate"]) for r in ec if r["system"] == system)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=system, color=colors[system],
                    linestyle="--" if "TCP" in system else "-")
    ax.set_xscale("log")
    ax.set_xticks([1, 100])
    ax.set_xticklabels(["1", "100"])
    ax.set_xlabel("connections (window 1)")
    ax.set_ylabel("round trips/s")
    ax.set_title("Echo, 64 B")
    ax.grid(True, alpha=0.3)
    if ec:
        ax.legend(fontsize=8)
    ax = axes[3]
    fo = [r for r in results if r["workload"] == "fanout"]
    for system in ("streamotter (1 engine)", "streamotter (2 engines)", "uWebSockets (socketify)"):
        pts = sorted((s, best_of(fo, system=system, subs=s)["rate"]) for s in sorted({r["subs"] for r in fo if r["system"] == system}))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=system, color=colors[system])
    ax.set_xscale("log")
    ax.set_xticks([1000, 10000])
    ax.set_xticklabels(["1,000", "10,000"])
    ax.set_xlabel("subscribers")
    ax.set_ylabel("deliveries/s")
    ax.set_title("Fan-out, 64 B")
    ax.grid(True, alpha=0.3)
    if fo:
        ax.legend(fontsize=8)
    fig.suptitle("Throughput against connections (one machine, loopback)")
    fig.tight_layout()
    p = os.path.join(RESULTS, "throughput.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    made.append(p)

    # Latency percentiles against load.
    la = sorted([r for r in results if r["workload"] == "latency" and r.get("config") == "bench" and r["load_pct"] < 100],
                key=lambda r: r["load_pct"])
    if la:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        ax = axes[0]
        # Evenly spaced points (the loads are not), labelled with the load and the rate.
        x = list(range(len(la)))
        labels = [f"{r['load_pct']:g}%\n{fmt_rate(r.get('records_per_s'))} rec/s" for r in la]
        for key, label, style in (("p50_us", "p50", "o-"), ("p99_us", "p99", "s-"), ("p999_us", "p99.9", "^-")):
            ax.plot(x, [r[key] / 1000 for r in la], style, label=f"delivery {label}")
        ax.axhline(10, ls=":", color="#d62728", label="target: p99 < 10 ms at 50%")
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_xlabel("load (share of the measured maximum)")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title("Publish → Kafka → delivery")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1]
        for key, label, style in (("ack_p50_us", "p50", "o-"), ("ack_p99_us", "p99", "s-"), ("ack_p999_us", "p99.9", "^-")):
            ax.plot(x, [max(r.get(key, 0), 1) / 1000 for r in la], style, label=f"ack {label}")
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_xlabel("load (share of the measured maximum)")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_title("Publish → Kafka ack")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle("Latency percentiles against load (10 publishers, 10 subscribers, 64 B)")
        fig.tight_layout()
        p = os.path.join(RESULTS, "latency.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
        made.append(p)
    return made


# -------------------------------------------------------------------- main

def splice_markdown(path, body):
    begin, end = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
    if not os.path.exists(path):
        return False
    text = open(path).read()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(path, "w").write(head + begin + "\n" + body + "\n" + end + tail)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--streamotter", default=os.environ.get("STREAMOTTER_BIN", os.path.join(ROOT, "build", "bin", "streamotter")))
    ap.add_argument("--only", default=",".join(ALL_WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="short runs, to check the suite itself")
    ap.add_argument("--no-markdown", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--publish", action="store_true",
                    help="write a --quick or --only run to bench/results/ and BENCHMARKS.md too")
    ap.add_argument("--from-json", help="only redo tables, charts and markdown from a results file")
    args = ap.parse_args()
    # A partial run (short, or not every workload) must not replace the published results:
    # it goes to bench/results/partial/ (not kept in git) unless --publish.
    global RESULTS, LOGS
    partial = args.quick or set(w.strip() for w in args.only.split(",")) != set(ALL_WORKLOADS)
    if partial and not args.publish and not args.from_json:
        RESULTS = os.path.join(HERE, "results", "partial")
        LOGS = os.path.join(RESULTS, "logs")
        args.no_markdown = True
        log(f"partial run: results go to {os.path.relpath(RESULTS, ROOT)}/, BENCHMARKS.md is left alone (--publish to change that)")
    os.makedirs(RESULTS, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    if args.from_json:
        doc = json.load(open(args.from_json))
    else:
        for prog in ("loadgen", "tcp_echo", "rdkafka_produce", "lws_echo"):
            if not os.path.exists(os.path.join(args.bin_dir, prog)):
                sys.exit(f"{prog} not found in {args.bin_dir}: run `make bench`")
        if not os.path.exists(args.streamotter):
            sys.exit(f"{args.streamotter} not found: run `make build`")
        suite = Suite(args)
        started = time.time()
        doc = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), "versions": versions(args.streamotter), "quick": args.quick}
        log(f"machine: {doc['machine']}\nversions: {doc['versions']}")
        for name in args.only.split(","):
            getattr(suite, "w_" + name.strip())()
        doc["results"] = suite.results
        doc["errors"] = suite.errors
        doc["elapsed_s"] = round(time.time() - started, 1)
        doc["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    doc["targets"] = targets(doc["results"])
    md = tables(doc["results"])
    tmd = targets_md(doc["targets"])
    made = charts(doc["results"])
    json.dump(doc, open(os.path.join(RESULTS, "latest.json"), "w"), indent=1)
    m = doc["machine"]
    header = (f"Run {doc['started']} ({doc.get('elapsed_s', '?')} s), streamotter {doc['versions'].get('git', '?')}, "
              f"{m.get('nproc')} cores ({m.get('cpu', '?')}), {m.get('mem_gib', '?')} GiB, load average "
              f"{' '.join(m.get('loadavg_start', []))} at start, {' '.join(m.get('loadavg_end', []))} at the end"
              f"{', QUICK run' if doc.get('quick') else ''}.\n")
    body = header + "\n#### Targets\n\n" + tmd + "\n\n" + md
    if doc.get("errors"):
        body += "\n**Runs that failed:**\n\n" + "\n".join(f"- {e}" for e in doc["errors"]) + "\n"
    open(os.path.join(RESULTS, "latest.md"), "w").write(body)
    print("\n" + body)
    if made:
        log("charts: " + ", ".join(os.path.relpath(p, ROOT) for p in made))
    if not args.no_markdown and splice_markdown(os.path.join(ROOT, "BENCHMARKS.md"), body):
        log("BENCHMARKS.md updated")


if __name__ == "__main__":
    main()
