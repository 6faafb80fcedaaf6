#!/usr/bin/env python3
"""The gateway's own CPU per published message, and publish latency at a fixed rate.

Starts a real broker (nats-server with JetStream; tansu for Kafka when it is installed), tollgate
(release build) with one publish route per broker, then for each broker:

  1. throughput: `oha -n N -c C` POSTs of a 256-byte body, and the gateway process's CPU time
     (utime + stime from /proc) over the run: acknowledged messages per CPU-second of gateway;
  2. latency: `oha -q RATE` for a fixed number of requests, p50/p99 of the publish (answer after
     the broker's acknowledgement);
  3. the baseline: the same client library publishing directly (examples/direct-publish, with
     the gateway's producer settings, as many messages in flight as oha's connections) — its own
     CPU per acknowledged message — plus the gateway's CPU per plainly proxied request (a GET to
     sample-http). The issue's goal: gateway CPU per message <= 1.5 x that sum.

Everything on 127.0.0.1; every process started here is stopped at the end. The broker's CPU does
not count: only the gateway's process is measured.

    cargo build --release -p tollgate -p sample-http -p direct-publish
    python3 benches/load/publish.py [--requests 20000] [--concurrency 32] [--rate 2000]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def nats_request(port, subject, payload):
    """One request over NATS's text protocol (no client library needed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()  # INFO
        body = payload.encode()
        s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.bench 1\r\n'
                  + f"PUB {subject} _INBOX.bench {len(body)}\r\n".encode() + body + b"\r\n")
        while True:
            line = f.readline()
            if line.startswith(b"MSG"):
                return f.readline()
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")


def oha():
    local = os.path.join(HERE, ".tools", "bin", "oha")
    return local if os.path.exists(local) else shutil.which("oha")


def run_oha(args, url, body_file):
    out = subprocess.run([oha(), "--no-tui", "--output-format", "json", "-m", "POST",
                          "-D", body_file, "-T", "application/json"] + args + [url],
                         capture_output=True, text=True, timeout=900)
    return json.loads(out.stdout)


def start_brokers(tmp, procs, name):
    """nats-server with a JetStream stream on `{name}.>`, and tansu with a topic `name` when it
    is installed; the processes go into `procs`. Returns (NATS port, Kafka port or None)."""
    nats_port = free_port()
    procs.append(subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p",
                                   str(nats_port), "-sd", os.path.join(tmp, "js")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    assert wait_port(nats_port), "nats-server did not start"
    created = nats_request(nats_port, f"$JS.API.STREAM.CREATE.{name.upper()}",
                           json.dumps({"name": name.upper(), "subjects": [f"{name}.>"],
                                       "storage": "memory", "max_msgs": 1000000}))
    assert b"error" not in created, created
    tansu = os.path.join(os.environ.get("TOLLGATE_TOOLS",
                                        os.path.expanduser("~/.cache/tollgate-tools")),
                         "bin", "tansu")
    if not os.path.exists(tansu):
        return nats_port, None
    kp = free_port()
    procs.append(subprocess.Popen(
        [tansu, "broker", "--listener-url", f"tcp://127.0.0.1:{kp}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{kp}",
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    assert wait_port(kp), "tansu did not start"
    subprocess.run([tansu, "topic", "create", name, "--partitions", "1",
                    "--broker", f"tcp://127.0.0.1:{kp}"], check=False,
                   capture_output=True, timeout=60)
    return nats_port, kp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--latency-requests", type=int, default=10000)
    a = ap.parse_args()
    if not oha():
        sys.exit("oha not found: benches/load/run.sh installs it into benches/load/.tools")
    tollgate = os.path.join(ROOT, "target", "release", "tollgate")
    tmp = tempfile.mkdtemp(prefix="tollgate-publish-bench-")
    procs = []
    try:
        nats_port, kp = start_brokers(tmp, procs, "bench")
        brokers = [("nats", "nats", f'servers = ["nats://127.0.0.1:{nats_port}"]',
                    'subject = "bench.in"')]
        direct = {"nats": ["nats", f"nats://127.0.0.1:{nats_port}", "bench.direct"]}
        if kp:
            brokers.append(("kafka", "kafka", f'bootstrap = ["127.0.0.1:{kp}"]',
                            'topic = "bench"'))
            direct["kafka"] = ["kafka", f"127.0.0.1:{kp}", "bench"]
        upstream = free_port()
        procs.append(subprocess.Popen([os.path.join(ROOT, "target", "release", "sample-http"),
                                       f"127.0.0.1:{upstream}", "users"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        assert wait_port(upstream), "sample-http did not start"
        port, admin = free_port(), free_port()
        cfg = [f'[[listeners]]\nname = "bench"\naddress = "127.0.0.1:{port}"\n',
               f'[admin]\naddress = "127.0.0.1:{admin}"\n', '[log]\nlevel = "warn"\n',
               f'[upstreams.plain]\ntargets = ["127.0.0.1:{upstream}"]\n'
               '[routes.plain]\nexact = "/users/1"\nupstream = "plain"\n']
        for name, kind, conn, dest in brokers:
            cfg.append(f'[brokers.{name}]\nkind = "{kind}"\n{conn}\n')
            cfg.append(f'[routes.{name}]\nexact = "/{name}"\n[routes.{name}.publish]\n'
                       f'broker = "{name}"\n{dest}\n')
        path = os.path.join(tmp, "gateway.toml")
        with open(path, "w") as f:
            f.write("\n".join(cfg))
        gw = subprocess.Popen([tollgate, "-c", path], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "gateway.log"), "w"))
        procs.append(gw)
        assert wait_port(port), "tollgate did not start"
        body_file = os.path.join(tmp, "body.json")
        with open(body_file, "w") as f:
            f.write(json.dumps({"event": "bench", "pad": "x" * 220})[:256])
        report = {}
        plain = f"http://127.0.0.1:{port}/users/1"
        subprocess.run([oha(), "--no-tui", "-n", "2000", "-c", str(a.concurrency), plain],
                       capture_output=True, check=True)
        before = cpu_seconds(gw.pid)
        out = subprocess.run([oha(), "--no-tui", "--output-format", "json", "-n",
                              str(a.requests), "-c", str(a.concurrency), plain],
                             capture_output=True, check=True, text=True)
        proxied = json.loads(out.stdout)["statusCodeDistribution"].get("200", 0)
        proxied_us = (cpu_seconds(gw.pid) - before) / proxied * 1e6 if proxied else None
        report["proxied_request"] = {"requests": proxied,
                                     "gateway_cpu_us_per_request": round(proxied_us, 1)
                                     if proxied_us else None}
        for name, *_ in brokers:
            url = f"http://127.0.0.1:{port}/{name}"
            run_oha(["-n", "2000", "-c", str(a.concurrency)], url, body_file)  # warm-up
            before = cpu_seconds(gw.pid)
            t0 = time.time()
            r = run_oha(["-n", str(a.requests), "-c", str(a.concurrency)], url, body_file)
            wall = time.time() - t0
            cpu = cpu_seconds(gw.pid) - before
            ok = r["statusCodeDistribution"].get("202", 0)
            lat = run_oha(["-n", str(a.latency_requests), "-q", str(a.rate),
                           "-c", str(a.concurrency)], url, body_file)
            report[name] = {
                "acknowledged": ok, "requests": a.requests, "wall_s": round(wall, 2),
                "gateway_cpu_s": round(cpu, 2),
                "acked_per_gateway_cpu_second": round(ok / cpu) if cpu else None,
                "gateway_cpu_us_per_message": round(cpu / ok * 1e6, 1) if ok else None,
                "throughput_per_s": round(ok / wall),
                "rate": a.rate,
                "p50_ms": round(lat["latencyPercentiles"]["p50"] * 1000, 2),
                "p99_ms": round(lat["latencyPercentiles"]["p99"] * 1000, 2),
                "latency_run_202": lat["statusCodeDistribution"].get("202", 0),
            }
            tool = os.path.join(ROOT, "target", "release", "direct-publish")
            if os.path.exists(tool):
                out = subprocess.run([tool] + direct[name] + [str(a.requests),
                                                              str(a.concurrency)],
                                     capture_output=True, text=True, timeout=600)
                d = json.loads(out.stdout) if out.returncode == 0 else {"error": out.stderr}
                report[name]["direct_client"] = d
                per_msg = report[name]["gateway_cpu_us_per_message"]
                if d.get("cpu_us_per_message") and per_msg and proxied_us:
                    base = d["cpu_us_per_message"] + proxied_us
                    report[name]["ratio_to_direct_plus_proxied"] = round(per_msg / base, 2)
        print(json.dumps(report, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
