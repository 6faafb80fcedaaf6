#!/usr/bin/env python3
"""SSE fan-out: the gateway's memory per subscriber, and its CPU per delivered event.

Starts nats-server (and tansu for Kafka when it is installed) and tollgate (release build) with
one subscribe route and one publish route per broker, then for each broker:

  1. opens one subscriber and publishes a message through the gateway (warm-up: the shared
     consumer exists), and reads the gateway's RSS (VmRSS from /proc);
  2. opens N more subscribers on the same topic/subject (raw sockets, each read until the
     stream's opening comment), publishes M messages through the gateway, waits until every
     subscriber got every one, and reads the RSS again;
  3. reports (RSS after - RSS before) / N, and the gateway's CPU time per delivered event.

Everything on 127.0.0.1; every process started here is stopped at the end.

    python3 benches/load/sse_fanout.py [--subscribers 1000] [--messages 20]
"""

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from publish import ROOT, cpu_seconds, free_port, start_brokers, wait_port  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def subscribe(port, path):
    """An open SSE stream, read up to its opening comment."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: bench\r\naccept: text/event-stream\r\n\r\n"
                 .encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    buf = b""
    while b": subscribed" not in buf:
        buf += await reader.read(4096)
    return reader, writer


async def read_events(reader, want):
    got, buf = 0, b""
    while got < want:
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"stream ended after {got} of {want} events")
        buf += chunk
        got += buf.count(b"\ndata: ")
        buf = buf[buf.rfind(b"\n"):]
    return got


def publish(port, path, n):
    import urllib.request
    for i in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=json.dumps({"n": i, "pad": "x" * 100}).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 202, r.status


async def measure(gw_pid, port, name, subscribers, messages):
    path = f"/{name}/stream"
    first = await subscribe(port, path)
    await asyncio.to_thread(publish, port, f"/{name}/in", 1)
    await read_events(first[0], 1)
    await asyncio.sleep(1)
    before = rss_kib(gw_pid)
    streams = []
    for _ in range(subscribers):
        streams.append(await subscribe(port, path))
    connected = rss_kib(gw_pid)
    cpu0 = cpu_seconds(gw_pid)
    await asyncio.to_thread(publish, port, f"/{name}/in", messages)
    await asyncio.gather(*(read_events(r, messages) for r, _ in streams))
    cpu = cpu_seconds(gw_pid) - cpu0
    after = rss_kib(gw_pid)
    for _, w in streams + [first]:
        w.close()
    delivered = subscribers * messages
    return {
        "subscribers": subscribers,
        "messages": messages,
        "rss_before_kib": before,
        "rss_connected_kib": connected,
        "rss_after_kib": after,
        "rss_per_subscriber_kib": round((after - before) / subscribers, 1),
        "events_delivered": delivered,
        "gateway_cpu_s": round(cpu, 2),
        "gateway_cpu_us_per_event": round(cpu / delivered * 1e6, 2) if delivered else None,
    }


async def held_requests(gw_pid, port, n):
    """The same number of plain proxied requests held open by an upstream that has not answered
    yet: what any held request costs the gateway (pingora's session, the request's state)."""
    async def hold(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.read()  # until the gateway gives the request up
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass

    upstream = await asyncio.start_server(hold, "127.0.0.1", HELD_UPSTREAM_PORT)
    first = await asyncio.open_connection("127.0.0.1", port)
    first[1].write(b"GET /held HTTP/1.1\r\nhost: bench\r\n\r\n")
    await first[1].drain()
    await asyncio.sleep(1)
    before = rss_kib(gw_pid)
    conns = []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /held HTTP/1.1\r\nhost: bench\r\n\r\n")
        await w.drain()
        conns.append((r, w))
    await asyncio.sleep(2)
    after = rss_kib(gw_pid)
    for _, w in conns + [first]:
        w.close()
    upstream.close()
    return {"requests": n, "rss_before_kib": before, "rss_after_kib": after,
            "rss_per_request_kib": round((after - before) / n, 1)}


HELD_UPSTREAM_PORT = free_port()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--brokers", default="nats,kafka",
                    help="which, in order (each after the other in one gateway process); "
                         "`held` holds as many plain proxied requests open, for comparison")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    tollgate = os.path.join(ROOT, "target", "release", "tollgate")
    tmp = tempfile.mkdtemp(prefix="tollgate-sse-bench-")
    procs = []
    try:
        nats_port, kp = start_brokers(tmp, procs, "fanout")
        brokers = [("nats", "nats", f'servers = ["nats://127.0.0.1:{nats_port}"]',
                    'subject = "fanout.in"', 'subject = "fanout.in"')]
        if kp:
            brokers.append(("kafka", "kafka", f'bootstrap = ["127.0.0.1:{kp}"]',
                            'topic = "fanout"', 'topic = "fanout"'))
        port, admin = free_port(), free_port()
        cfg = [f'[[listeners]]\nname = "bench"\naddress = "127.0.0.1:{port}"\n',
               f'[admin]\naddress = "127.0.0.1:{admin}"\n', '[log]\nlevel = "warn"\n']
        for name, kind, conn, pub, sub in brokers:
            cfg.append(f'[brokers.{name}]\nkind = "{kind}"\n{conn}\n')
            cfg.append(f'[routes.{name}-in]\nexact = "/{name}/in"\n[routes.{name}-in.publish]\n'
                       f'broker = "{name}"\n{pub}\n')
            cfg.append(f'[routes.{name}-stream]\nexact = "/{name}/stream"\n'
                       f'[routes.{name}-stream.subscribe]\nbroker = "{name}"\n{sub}\n')
        cfg.append(f'[upstreams.held]\ntargets = ["127.0.0.1:{HELD_UPSTREAM_PORT}"]\n'
                   '[routes.held]\nexact = "/held"\nupstream = "held"\nread_timeout = "1h"\n')
        path = os.path.join(tmp, "gateway.toml")
        with open(path, "w") as f:
            f.write("\n".join(cfg))
        gw = subprocess.Popen([tollgate, "-c", path], stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(tmp, "gateway.log"), "w"))
        procs.append(gw)
        assert wait_port(port), "tollgate did not start"
        report = {}
        wanted = a.brokers.split(",")
        for name in wanted:
            if name == "held":
                report[name] = asyncio.run(held_requests(gw.pid, port, a.subscribers))
            elif name in {b[0] for b in brokers}:
                report[name] = asyncio.run(measure(gw.pid, port, name, a.subscribers,
                                                   a.messages))
            time.sleep(1)
        print(json.dumps(report, indent=2))
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
