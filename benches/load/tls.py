#!/usr/bin/env python3
"""TLS cost side by side: tollgate (rustls) vs nginx (OpenSSL) vs Envoy (BoringSSL).

Called by `benches/load/run.sh --tls` (which installs the tools, Envoy and builds tollgate in
release mode); the protocol is in docs/operations/benchmark.md, "TLS". Loopback only; every run
is bounded in time; every process started here is stopped on exit.

Each proxy terminates TLS on CPU 1 with one worker and proxies to an nginx upstream on CPU 0,
where the clients run too. All three get the same certificate (ECDSA P-256, then RSA-2048), TLS
1.3 only, TLS_AES_128_GCM_SHA256 and X25519. What is measured is the proxy's own CPU time (utime
+ stime of its processes) per unit of work, so the figures do not depend on how fast the client
is:

  full       CPU per new connection: full handshake + one HTTP/1.0 GET (`openssl s_time -new`)
  resumed    CPU per resumed connection: the same with the session resumed (`s_time -reuse`)
  h1 / h2    CPU per request over 16 keep-alive HTTPS connections (wrk; h2load with 10 streams)
  idle       RSS per idle TLS connection, each after one request (conns.py --tls)

"Handshakes per second per core" is 1 / (CPU seconds per handshake), the request's share taken
out with the keep-alive h1 figure.
"""

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench  # noqa: E402  (the shared harness: processes, CPU accounting, wrk/h2load parsing)
from bench import CLK_TCK, LOAD_CPU, PROCS, PROXY_CPU, log, run  # noqa: E402

REPO = bench.REPO
SUITE = "TLS_AES_128_GCM_SHA256"
# Every client (s_time, wrk, h2load, python) offers only SUITE and X25519, through OpenSSL's
# system-wide defaults: wrk has no option for it. Set in main().
CLIENT_OPENSSL_CONF = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Ciphersuites = {suite}
Groups = X25519
"""
CLIENT_ENV = dict(os.environ)

UPSTREAM_CONF = """worker_processes 1;
daemon off;
master_process off;
pid {tmp}/upstream.pid;
error_log {tmp}/upstream.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections 20000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {tmp}/up-body;
  proxy_temp_path {tmp}/up-proxy;
  fastcgi_temp_path {tmp}/up-fcgi;
  uwsgi_temp_path {tmp}/up-uwsgi;
  scgi_temp_path {tmp}/up-scgi;
  server {{
    listen 127.0.0.1:{up} backlog=4096;
    location / {{ default_type text/plain; return 200 "hello, world\\n"; }}
  }}
}}
"""

NGINX_CONF = """worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx-{kind}.pid;
error_log {tmp}/nginx-{kind}.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections 20000; }}
http {{
  access_log off;
  server_tokens off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_body_temp_path {tmp}/ngx-body-{kind};
  proxy_temp_path {tmp}/ngx-proxy-{kind};
  fastcgi_temp_path {tmp}/ngx-fcgi-{kind};
  uwsgi_temp_path {tmp}/ngx-uwsgi-{kind};
  scgi_temp_path {tmp}/ngx-scgi-{kind};
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_conf_command Ciphersuites {suite};
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    ssl_early_data off;
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
    }}
  }}
}}
"""

ENVOY_CONF = """static_resources:
  listeners:
  - name: tls
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_params:
              tls_minimum_protocol_version: TLSv1_3
              tls_maximum_protocol_version: TLSv1_3
              ecdh_curves: [X25519]
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{ filename: {cert} }}
              private_key: {{ filename: {key} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: tls
          codec_type: AUTO
          use_remote_address: true
          http_protocol_options: {{ accept_http_10: true, default_host_for_http_10: localhost }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: up, timeout: 60s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {up} }} }} }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
"""

TOLLGATE_CONF = """[server]
threads = 1
upgrade_sock = "{tmp}/tollgate-{kind}.sock"

[log]
level = "warn"

[access_log]
enabled = false

[admin]
enabled = false

[[listeners]]
name = "tls"
address = "127.0.0.1:{port}"
tls = {{ cert_file = "{cert}", key_file = "{key}", h2 = true }}

[upstreams.up]
targets = ["127.0.0.1:{up}"]

[routes.all]
prefix = "/"
upstream = "up"
"""


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_cert(tmp, kind):
    """A self-signed certificate for 127.0.0.1/localhost: ECDSA P-256 or RSA-2048."""
    key, cert = f"{tmp}/{kind}.key", f"{tmp}/{kind}.pem"
    algo = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
        if kind == "ecdsa"
        else ["-newkey", "rsa:2048"]
    )
    r = run(
        ["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", cert]
        + algo,
        60,
    )
    if r.returncode != 0:
        sys.exit(f"openssl req failed: {r.stderr}")
    # rustls reads PKCS#8, SEC1 and PKCS#1 keys alike; nginx and Envoy too.
    return cert, key


def proxy_pids(p):
    return bench.tree_pids(p.pid)


def cpu_of(p, fn):
    """(result of fn(), proxy CPU seconds while it ran)."""
    pids = proxy_pids(p)
    a = bench.cpu_ticks(pids)
    out = fn()
    b = bench.cpu_ticks(pids)
    return out, (b - a) / CLK_TCK


def s_time(port, seconds, reuse):
    argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-time", str(seconds),
            "-tls1_3", "-ciphersuites", SUITE, "-www", "/", "-reuse" if reuse else "-new"]
    r = run(argv, seconds + 30, cpu=LOAD_CPU, env=CLIENT_ENV)
    m = re.findall(r"(\d+) connections in ([\d.]+)s", r.stdout)
    if not m:
        log("s_time:", r.stdout[-400:], r.stderr[-400:])
        return None
    return int(m[-1][0])


def wrk(port, seconds):
    r = run(["wrk", "-t1", "-c16", f"-d{seconds}s", f"https://127.0.0.1:{port}/"],
            seconds + 30, cpu=LOAD_CPU, env=CLIENT_ENV)
    res = bench.parse_wrk(r.stdout)
    if res["errors"] or res["non2xx"]:
        log("wrk errors:", r.stdout[-400:])
    return res["requests"]


def h2load(port, seconds):
    r = run(["h2load", "-c16", "-m10", "-D", str(seconds), "--tls13-ciphers", SUITE,
             f"https://127.0.0.1:{port}/"], seconds + 30, cpu=LOAD_CPU, env=CLIENT_ENV)
    res = bench.parse_h2load(r.stdout)
    if res["errors"] or res["non2xx"] or "h2" not in r.stdout:
        log("h2load:", r.stdout[-600:], r.stderr[-300:])
    return res["requests"]


def idle_kib(p, port, n):
    """RSS growth per idle TLS connection (KiB), each connection after one request."""
    import subprocess

    pids = proxy_pids(p)
    before = bench.mem_kib(pids)[0]
    holder = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, sys.executable, os.path.join(HERE, "conns.py"), str(port),
         "-n", str(n), "--tls", "--hold", "120"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLIENT_ENV)
    line = holder.stdout.readline().split()
    opened = int(line[1]) if len(line) >= 2 and line[0] == "READY" else 0
    time.sleep(1.0)  # let the proxy settle its buffers
    after = bench.mem_kib(pids)[0]
    try:
        holder.stdin.write("\n")
        holder.stdin.flush()
    except OSError:
        pass
    holder.wait(30)
    if not opened:
        return None
    return (after - before) / opened


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--tollgate", default=os.path.join(REPO, "target/release/tollgate"))
    ap.add_argument("--seconds", type=int, default=10, help="length of each run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--idle", type=int, default=2000, help="idle TLS connections held")
    ap.add_argument("--only", default="tollgate,nginx,envoy")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, bench.on_signal)
    signal.signal(signal.SIGINT, bench.on_signal)
    tmp = tempfile.mkdtemp(prefix="tollgate-tls-bench-")
    with open(f"{tmp}/client-openssl.cnf", "w") as f:
        f.write(CLIENT_OPENSSL_CONF.format(suite=SUITE))
    CLIENT_ENV["OPENSSL_CONF"] = f"{tmp}/client-openssl.cnf"
    try:
        return measure(args, tmp)
    finally:
        PROCS.stop_all()


def start(name, kind, args, tmp, up, cert, key):
    port = free_port()
    vals = dict(tmp=tmp, kind=kind, port=port, up=up, cert=cert, key=key, suite=SUITE,
                nofile=bench.NOFILE, admin=free_port())
    if name == "nginx":
        conf = f"{tmp}/nginx-{kind}.conf"
        open(conf, "w").write(NGINX_CONF.format(**vals))
        argv = ["nginx", "-c", conf, "-p", tmp, "-e", f"{tmp}/nginx-{kind}.stderr.log"]
    elif name == "envoy":
        conf = f"{tmp}/envoy-{kind}.yaml"
        open(conf, "w").write(ENVOY_CONF.format(**vals))
        argv = [args.envoy, "-c", conf, "--concurrency", "1", "--log-level", "warn",
                "--base-id", str(port)]
    else:
        conf = f"{tmp}/tollgate-{kind}.toml"
        open(conf, "w").write(TOLLGATE_CONF.format(**vals))
        argv = [args.tollgate, "-c", conf]
    p = PROCS.start(f"{name}-{kind}", argv, PROXY_CPU, f"{tmp}/{name}-{kind}.log")
    if not bench.wait_port(port, 30, p):
        sys.exit(f"{name} ({kind}) did not listen; see {tmp}/{name}-{kind}.log")
    return p, port


def measure(args, tmp):
    up = free_port()
    open(f"{tmp}/upstream.conf", "w").write(UPSTREAM_CONF.format(tmp=tmp, up=up, nofile=bench.NOFILE))
    upstream = PROCS.start("upstream", ["nginx", "-c", f"{tmp}/upstream.conf", "-p", tmp, "-e",
                                        f"{tmp}/upstream.stderr.log"], LOAD_CPU, f"{tmp}/up.log")
    if not bench.wait_port(up, 30, upstream):
        sys.exit("the upstream nginx did not start")
    names = [n for n in args.only.split(",") if n]
    results = {}  # (name, kind, metric) -> [values]
    for kind in ("ecdsa", "rsa"):
        cert, key = make_cert(tmp, kind)
        servers = {n: start(n, kind, args, tmp, up, cert, key) for n in names}
        for rnd in range(args.rounds):
            for n in names:  # interleaved: a slow moment of the machine hits every proxy
                p, port = servers[n]
                for metric, fn in (
                    ("full", lambda: s_time(port, args.seconds, False)),
                    ("resumed", lambda: s_time(port, args.seconds, True)),
                    ("h1", lambda: wrk(port, args.seconds)),
                    ("h2", lambda: h2load(port, args.seconds)),
                ):
                    if kind == "rsa" and metric in ("h1", "h2"):
                        continue  # the certificate plays no part once the handshake is done
                    count, cpu = cpu_of(p, fn)
                    if count:
                        us = cpu * 1e6 / count
                        results.setdefault((n, kind, metric), []).append(us)
                        log(f"round {rnd + 1} {kind} {n} {metric}: {count} in {cpu:.2f} s CPU"
                            f" = {us:.1f} µs each")
        if kind == "ecdsa":
            for n in names:
                p, port = servers[n]
                kib = idle_kib(p, port, args.idle)
                if kib is not None:
                    results[(n, kind, "idle")] = [kib]
                    log(f"{n}: {kib:.1f} KiB per idle TLS connection")
        for n in names:
            PROCS.stop(servers[n][0])
    report(results, names, args)
    return 0


def med(results, key):
    v = results.get(key)
    return statistics.median(v) if v else None


def report(results, names, args):
    def fmt(x, pat="{:.1f}"):
        return "n/a" if x is None else pat.format(x)

    lines = [f"TLS 1.3, {SUITE}, X25519; one worker on CPU 1; medians of {args.rounds} rounds of "
             f"{args.seconds} s. CPU is the proxy's own (utime + stime).", ""]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    h1 = {n: med(results, (n, "ecdsa", "h1")) for n in names}
    for kind in ("ecdsa", "rsa"):
        for metric, label in (("full", "full handshake + 1 request, µs CPU"),
                              ("resumed", "resumed handshake + 1 request, µs CPU")):
            row = [med(results, (n, kind, metric)) for n in names]
            lines.append(f"| {kind.upper()} {label} | " + " | ".join(fmt(x) for x in row) + " |")
            per_core = []
            for n, x in zip(names, row):
                hs = None if x is None or h1[n] is None else x - h1[n]
                per_core.append(None if not hs or hs <= 0 else 1e6 / hs)
            lines.append(f"| {kind.upper()} {metric} handshakes/s per core | "
                         + " | ".join(fmt(x, "{:,.0f}") for x in per_core) + " |")
    for metric, label in (("h1", "keep-alive HTTPS HTTP/1.1, µs CPU/request"),
                          ("h2", "keep-alive HTTPS h2, µs CPU/request")):
        row = [med(results, (n, "ecdsa", metric)) for n in names]
        lines.append(f"| {label} | " + " | ".join(fmt(x) for x in row) + " |")
    row = [med(results, (n, "ecdsa", "idle")) for n in names]
    lines.append(f"| RSS per idle TLS connection, KiB ({args.idle} held) | "
                 + " | ".join(fmt(x) for x in row) + " |")
    if "tollgate" in names:
        lines.append("")
        for other in [n for n in names if n != "tollgate"]:
            ratios = []
            for kind, metric in (("ecdsa", "full"), ("rsa", "full"), ("ecdsa", "resumed"),
                                 ("ecdsa", "h1"), ("ecdsa", "h2")):
                a, b = med(results, ("tollgate", kind, metric)), med(results, (other, kind, metric))
                if a and b:
                    ratios.append(f"{kind} {metric} {a / b:.2f}")
            lines.append(f"tollgate / {other} CPU: " + ", ".join(ratios))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
