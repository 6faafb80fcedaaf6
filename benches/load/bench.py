#!/usr/bin/env python3
"""Side-by-side load benchmark: tollgate vs nginx vs Envoy vs direct, on one 2-core machine.

Called by benches/load/run.sh (which installs the tools and builds tollgate); see
docs/operations/benchmark.md for the protocol. Everything listens on 127.0.0.1 only; every load
run is bounded in time (and wrapped in `timeout`); every process started here is stopped on exit.

Protocol: the proxy under test alone on CPU 1 with one worker thread; the load generator and the
upstream (nginx) on CPU 0. All proxies are started at once and the rounds interleave them.
"""

import argparse
import atexit
import datetime
import glob
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import base64

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
TEMPLATES = os.path.join(HERE, "templates")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Scenarios whose load generator is h2load (h2c prior knowledge, 16 connections x 10 streams).
H2_SCENARIOS = ("c-h2c", "d-h2c", "d-grpc")
BODY = b"hello, world\n"
LOAD_CPU = "0"
PROXY_CPU = "1"
# Open files for every process started here: as many as the hard limit allows (10,000 idle
# connections need a bit over 10,000 in the proxy and in the client).
NOFILE = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])

# Reference figures quoted in the issue (CPU µs/req, instructions/req, p99 at 8k req/s).
REFERENCE = [
    ("nginx 1.22", "15.7", "20.2k", "0.64–0.71 ms"),
    ("HAProxy 2.6", "15.7", "28.0k", "0.56–0.64 ms"),
    ("minimal pingora 0.9 round-robin proxy", "32.0", "94.4k", "1.1–1.4 ms"),
    ("Envoy 1.40", "47.5", "146.7k", "3.0–5.1 ms"),
]


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes


class Procs:
    """Every process this harness starts; all are stopped on exit (by pid / own process group)."""

    def __init__(self):
        self.procs = []  # (name, Popen)

    def start(self, name, argv, cpu, log_path, env=None, cwd=None):
        def pre():
            os.setsid()
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

        f = open(log_path, "ab")
        p = subprocess.Popen(
            ["taskset", "-c", cpu] + argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pre,
            env=env,
            cwd=cwd,
        )
        f.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, grace=10.0):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)  # the group this harness created with setsid
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)

    def stop_all(self):
        for _, p in reversed(self.procs):
            try:
                self.stop(p, grace=5.0)
            except Exception as e:  # keep stopping the others
                log("stop failed:", e)
        self.procs = []


PROCS = Procs()


def on_signal(sig, _frm):
    log(f"signal {sig}: stopping everything")
    PROCS.stop_all()
    sys.exit(128 + sig)


def tree_pids(pid):
    """pid and its descendants (nginx: master + worker)."""
    kids = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        kids.setdefault(int(rest[1]), []).append(int(st.split("/")[2]))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """utime+stime (clock ticks) of the processes: /proc/PID/stat covers all their threads."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(")") + 2 :].split()
        total += int(rest[11]) + int(rest[12])  # fields 14, 15
    return total


def mem_kib(pids):
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


def cpu_stat():
    """{cpu_index: (busy, total)} jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                user, nice, system, idle, iowait, irq, softirq, steal = (v + [0] * 8)[:8]
                busy = user + nice + system + irq + softirq + steal
                out[int(m.group(1))] = (busy, busy + idle + iowait)
    return out


def busy_pct(a, b, cpu):
    db = b[cpu][0] - a[cpu][0]
    dt = b[cpu][1] - a[cpu][1]
    return 100.0 * db / dt if dt else 0.0


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def top_consumers(seconds=1.0, n=5):
    """The processes that used the most CPU over `seconds` (to record who else was busy)."""

    def snap():
        out = {}
        for st in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(st) as f:
                    data = f.read()
            except OSError:
                continue
            comm = data[data.index("(") + 1 : data.rindex(")")]
            rest = data[data.rindex(")") + 2 :].split()
            out[int(st.split("/")[2])] = (comm, int(rest[11]) + int(rest[12]))
        return out

    a = snap()
    time.sleep(seconds)
    b = snap()
    rows = []
    for pid, (comm, t) in b.items():
        if pid in a:
            d = t - a[pid][1]
            if d > 0:
                rows.append((100.0 * d / CLK_TCK / seconds, pid, comm))
    rows.sort(reverse=True)
    return [f"{comm}({pid}) {pct:.0f}%" for pct, pid, comm in rows[:n]]


def wait_port(port, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def run(argv, timeout, cpu=None, **kw):
    if cpu is not None:
        argv = ["taskset", "-c", cpu] + argv
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(
            argv, 124, e.stdout or "" if isinstance(e.stdout, str) else "", "timeout"
        )


def render(template, out_path, values):
    with open(os.path.join(TEMPLATES, template)) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    leftover = re.findall(r"@@[A-Z_0-9]+@@", text)
    if leftover:
        raise SystemExit(f"{template}: unreplaced {leftover}")
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


# --------------------------------------------------------------------------------------------
# Load generators and their output


def parse_wrk(out):
    r = {"requests": None, "rps": None, "errors": 0, "non2xx": 0, "p50_ms": None, "p99_ms": None}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] = sum(int(x) for x in m.groups())

    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            r[key] = ms(*m.groups())
    return r


def parse_h2load(out):
    r = {"requests": None, "rps": None, "errors": 0, "non2xx": 0}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    if m:
        r["requests"] = int(m.group(3))
        r["errors"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    return r


def parse_oha(out):
    r = {"rps": None, "p50_ms": None, "p99_ms": None, "p999_ms": None, "ok": None, "errors": None}
    try:
        j = json.loads(out)
    except json.JSONDecodeError:
        return r
    s = j.get("summary", {})
    r["rps"] = s.get("requestsPerSec")
    lp = j.get("latencyPercentiles", {})
    for k, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")):
        if lp.get(k) is not None:
            r[key] = lp[k] * 1000.0
    codes = j.get("statusCodeDistribution", {})
    r["ok"] = sum(v for c, v in codes.items() if str(c).startswith("2"))
    r["non2xx"] = sum(v for c, v in codes.items() if not str(c).startswith("2"))
    r["errors"] = sum(j.get("errorDistribution", {}).values())
    return r


# --------------------------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.rounds = 1 if args.quick else args.rounds
        self.dur = 2 if args.quick else args.duration
        self.cg_n = 2000 if args.quick else 10000
        self.cg_warm = 400 if args.quick else 2000
        self.mem_n = 1000 if args.quick else args.idle_conns
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.out = os.path.join(args.results, stamp + ("-quick" if self.quick else ""))
        os.makedirs(os.path.join(self.out, "raw"), exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="tollgate-bench-")
        # nginx workers run as `nobody` and must read the pre-framed gRPC reply file.
        os.chmod(self.tmp, 0o755)
        atexit.register(self.cleanup)
        self.res = {
            "started": stamp,
            "command": " ".join([os.path.relpath(os.path.join(HERE, "run.sh"), REPO)] + args.argv),
            "quick": self.quick,
            "rounds": self.rounds,
            "duration_s": self.dur,
            "env": {},
            "rounds_meta": [],
            "runs": [],  # one dict per load run
            "callgrind": [],
            "memory": [],
            "notes": [],
            "skipped": [],
            "profile": {},
        }
        b = args.base_port
        self.p = {
            "UP_H1": b, "UP_H2": b + 1, "UP_OTLP": b + 2,
            "TG_A": b + 10, "TG_B": b + 11, "TG_C": b + 12,
            "NGX_H1": b + 20, "NGX_H2": b + 21,
            "ENV_A": b + 30, "ENV_B": b + 31, "ENV_C": b + 32,
        }
        self.tollgate = os.path.join(REPO, "target", "release", "tollgate")
        self.envoy = args.envoy
        self.oha = args.oha
        self.procs = {}
        self.targets = {}  # scenario -> list of target dicts
        self.b_parts = None
        self.b_full_error = ""

    def cleanup(self):
        PROCS.stop_all()
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def note(self, msg):
        log("NOTE:", msg)
        self.res["notes"].append(msg)

    def skip(self, what, why):
        log(f"SKIP {what}: {why}")
        self.res["skipped"].append({"what": what, "why": why})

    def raw(self, name, text):
        with open(os.path.join(self.out, "raw", name), "w") as f:
            f.write(text)

    # ---- environment --------------------------------------------------------------------

    def environment(self):
        def first_line(argv, stream="stdout"):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                text = (p.stdout or "") + (p.stderr or "")
                return text.strip().splitlines()[0] if text.strip() else "?"
            except Exception as e:
                return f"? ({e})"

        model = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        git = lambda *a: subprocess.run(
            ["git", "-C", REPO] + list(a), capture_output=True, text=True
        ).stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no")
        self.res["env"] = {
            "nproc": os.cpu_count(),
            "cpu_model": model,
            "kernel": platform.release(),
            "os": first_line(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
            "memory": first_line(["sh", "-c", "free -h | awk '/Mem:/{print $2}'"]),
            "tollgate_commit": git("rev-parse", "--short=12", "HEAD"),
            "tollgate_dirty_files": dirty.splitlines(),
            "tollgate_binary_mtime": time.strftime(
                "%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(self.tollgate))
            ),
            "rustc": first_line(["rustc", "--version"]),
            "pingora": "0.9 (Cargo.lock: "
            + (
                re.search(
                    r'name = "pingora-core"\nversion = "([^"]+)"',
                    open(os.path.join(REPO, "Cargo.lock")).read(),
                )
                or re.match("(.*)", "?")
            ).group(1)
            + ")",
            "nginx": first_line(["nginx", "-v"]),
            "envoy": first_line([self.envoy, "--version"]).split("version:")[-1].strip(),
            "wrk": first_line(["wrk", "-v"]),
            "h2load": first_line(["h2load", "--version"]),
            "oha": first_line([self.oha, "--version"]),
            "valgrind": first_line(["valgrind", "--version"]),
            "python": platform.python_version(),
        }

    # ---- fixtures -----------------------------------------------------------------------

    def fixtures(self):
        t = self.tmp
        # gRPC request and reply, pre-framed (flag byte + 4-byte big-endian length).
        def frame(pb):
            return b"\x00" + len(pb).to_bytes(4, "big") + pb

        name, msg = b"World", b"Hello World"
        with open(os.path.join(t, "req.bin"), "wb") as f:
            f.write(frame(b"\x0a" + bytes([len(name)]) + name))
        reply = frame(b"\x0a" + bytes([len(msg)]) + msg)
        with open(os.path.join(t, "reply.bin"), "wb") as f:
            f.write(reply)
        os.makedirs(os.path.join(t, "grpcroot", "greeter.v1.Greeter"), exist_ok=True)
        with open(os.path.join(t, "grpcroot", "greeter.v1.Greeter", "SayHello"), "wb") as f:
            f.write(reply)
        with open(os.path.join(t, "hello.json"), "w") as f:
            f.write('{"name":"World"}')
        with open(os.path.join(t, "post-json.lua"), "w") as f:
            f.write(
                'wrk.method = "POST"\nwrk.body = \'{"name":"World"}\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
            )
        # Descriptor set for the transcoders.
        p = run(
            [
                "protoc", "-I", os.path.join(REPO, "proto"), "-I", "/usr/include",
                "--include_imports", f"--descriptor_set_out={t}/greeter.pb",
                os.path.join(REPO, "proto", "greeter.proto"),
            ],
            60,
        )
        if p.returncode != 0:
            self.note(f"protoc failed, scenario (c) will fail: {p.stderr.strip()}")
        # RS256 key pair, JWKS and a token valid for a week.
        key, pub = os.path.join(t, "jwt.key"), os.path.join(t, "jwt_pub.pem")
        run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", key], 60)
        run(["openssl", "pkey", "-in", key, "-pubout", "-out", pub], 60)
        mod = run(["openssl", "rsa", "-pubin", "-in", pub, "-noout", "-modulus"], 60).stdout
        n = bytes.fromhex(mod.strip().split("=", 1)[1])
        b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
        jwks = {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "bench",
                          "n": b64(n), "e": "AQAB"}]}
        self.jwks = json.dumps(jwks, separators=(",", ":"))
        now = int(time.time())
        header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
        payload = b64(json.dumps({"iss": "bench-issuer", "aud": "bench", "sub": "user-42",
                                  "scope": "read", "iat": now, "exp": now + 7 * 86400}).encode())
        signing = f"{header}.{payload}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                             capture_output=True, timeout=60).stdout
        self.token = f"{signing}.{b64(sig)}"

    # ---- configs ------------------------------------------------------------------------

    def values(self, off=0, tag="main", master="on"):
        v = {k: (port + off if k not in ("UP_H1", "UP_H2", "UP_OTLP") else port)
             for k, port in self.p.items()}
        v.update({"TMP": self.tmp, "TAG": tag, "MASTER": master, "JWKS": self.jwks,
                  "NOFILE": NOFILE, "WORKER_CONNECTIONS": NOFILE - 256})
        return v

    def tollgate_b_blocks(self, parts):
        blocks = {"TRACING": "", "JWT": "", "RATELIMIT": ""}
        if "tracing" in parts:
            blocks["TRACING"] = (
                "\n[tracing]\nenabled = true\nprotocol = \"http/protobuf\"\n"
                f"endpoint = \"http://127.0.0.1:{self.p['UP_OTLP']}\"\n"
                "service_name = \"tollgate-bench\"\nsampler = \"parentbased_traceidratio\"\n"
                "ratio = 0.01\n"
            )
        if "jwt" in parts:
            blocks["JWT"] = (
                "\n[routes.plain.plugins.jwt-auth]\n"
                f"providers = [{{ issuer = \"bench-issuer\", public_key_file = \"{self.tmp}/jwt_pub.pem\", "
                "audiences = [\"bench\"], algorithms = [\"RS256\"] }]\n"
                # Envoy's provider has the same jwt_cache_size (templates/envoy.yaml).
                "cache_size = 1024\n"
            )
        if "ratelimit" in parts:
            blocks["RATELIMIT"] = (
                "\n[routes.plain.plugins.rate-limit]\n"
                "limits = [{ rate = \"1000000/s\", burst = 1000000, key = \"client_ip\" }]\n"
            )
        return blocks

    def tollgate_check(self, path):
        p = run([self.tollgate, "-c", path, "check"], 60)
        return p.returncode == 0, (p.stdout + p.stderr).strip()

    def write_configs(self, off=0, tag="main", master="on"):
        v = self.values(off, tag, master)
        c = {}
        if tag == "main":
            c["upstream"] = render("upstream-nginx.conf", f"{self.tmp}/upstream.conf", v)
        c["nginx"] = render("nginx-proxy.conf", f"{self.tmp}/nginx-{tag}.conf", v)
        c["envoy"] = render("envoy.yaml", f"{self.tmp}/envoy-{tag}.yaml", v)
        c["tg_a"] = render("tollgate-a.toml", f"{self.tmp}/tollgate-a-{tag}.toml",
                           dict(v, PORT=v["TG_A"], TAG=f"a-{tag}"))
        # (b): the full set if tollgate accepts it, else as much as it accepts.
        wanted = ["jwt", "ratelimit", "tracing"]
        self.b_parts = None
        for parts in ([wanted] + [[x for x in wanted if x != d] for d in wanted]
                      + [[x] for x in wanted]):
            path = render("tollgate-b.toml", f"{self.tmp}/tollgate-b-{tag}.toml",
                          dict(v, PORT=v["TG_B"], TAG=f"b-{tag}", **self.tollgate_b_blocks(parts)))
            ok, msg = self.tollgate_check(path)
            if ok:
                self.b_parts = parts
                c["tg_b"] = path
                break
            if parts == wanted and tag == "main":
                self.b_full_error = msg
        if tag == "main" and self.b_parts != wanted:
            missing = [x for x in wanted if not self.b_parts or x not in self.b_parts]
            self.skip(f"(b) tollgate: {', '.join(missing)}",
                      "`tollgate check` refuses the full (b) config: " + self.b_full_error[:400])
        path = render("tollgate-c.toml", f"{self.tmp}/tollgate-c-{tag}.toml",
                      dict(v, PORT=v["TG_C"], TAG=f"c-{tag}"))
        ok, msg = self.tollgate_check(path)
        if ok:
            c["tg_c"] = path
        elif tag == "main":
            self.skip("(c) tollgate JSON→gRPC transcoding",
                      "pending: src/grpc/ is not wired into the gateway yet (src/grpc/mod.rs is "
                      "a placeholder); `tollgate check` on the scenario's config says: "
                      + msg.splitlines()[0][:300])
        return c

    # ---- start / stop -------------------------------------------------------------------

    def start_all(self):
        for k, port in self.p.items():
            if not port_free(port):
                raise SystemExit(f"port {port} ({k}) is in use: pass --base-port")
        c = self.write_configs()
        self.cfg = c
        logs = self.tmp
        pr = {}
        pr["upstream"] = PROCS.start("upstream", ["nginx", "-c", c["upstream"], "-p", self.tmp],
                                     LOAD_CPU, f"{logs}/upstream.out")
        # All proxies at once, each on CPU 1.
        pr["tollgate"] = PROCS.start("tollgate", [self.tollgate, "-c", c["tg_a"], "run"],
                                     PROXY_CPU, f"{logs}/tollgate-a.out")
        if "tg_b" in c:
            pr["tollgate-b"] = PROCS.start("tollgate-b", [self.tollgate, "-c", c["tg_b"], "run"],
                                           PROXY_CPU, f"{logs}/tollgate-b.out")
        if "tg_c" in c:
            pr["tollgate-c"] = PROCS.start("tollgate-c", [self.tollgate, "-c", c["tg_c"], "run"],
                                           PROXY_CPU, f"{logs}/tollgate-c.out")
        pr["nginx"] = PROCS.start("nginx", ["nginx", "-c", c["nginx"], "-p", self.tmp],
                                  PROXY_CPU, f"{logs}/nginx.out")
        pr["envoy"] = PROCS.start(
            "envoy",
            [self.envoy, "-c", c["envoy"], "--concurrency", "1", "-l", "warn",
             "--disable-hot-restart", "--log-path", f"{logs}/envoy.log"],
            PROXY_CPU, f"{logs}/envoy.out")
        self.procs = pr
        waits = [("upstream", "UP_H1"), ("upstream", "UP_H2"), ("upstream", "UP_OTLP"),
                 ("tollgate", "TG_A"), ("nginx", "NGX_H1"), ("nginx", "NGX_H2"),
                 ("envoy", "ENV_A"), ("envoy", "ENV_B"), ("envoy", "ENV_C")]
        if "tollgate-b" in pr:
            waits.append(("tollgate-b", "TG_B"))
        if "tollgate-c" in pr:
            waits.append(("tollgate-c", "TG_C"))
        for name, port in waits:
            if not wait_port(self.p[port], 60, pr[name]):
                tail = open(f"{logs}/{name if name != 'tollgate' else 'tollgate-a'}.out",
                            errors="replace").read()[-2000:] if name != "envoy" else \
                    open(f"{logs}/envoy.log", errors="replace").read()[-2000:]
                raise SystemExit(f"{name} did not open port {self.p[port]} ({port}):\n{tail}")
        time.sleep(1.0)
        # Idle RSS: right after start (plus the smoke requests below).
        for name, p in pr.items():
            rss, pss = mem_kib(tree_pids(p.pid))
            self.res["memory"].append({"process": name, "state": "idle after start",
                                       "rss_kib": rss, "pss_kib": pss})

    # ---- targets & smoke tests ----------------------------------------------------------

    def define_targets(self):
        P, pr = self.p, self.procs
        auth = f"Authorization: Bearer {self.token}"
        T = {}
        T["a"] = [
            dict(name="tollgate", proc="tollgate", port=P["TG_A"], path="/"),
            dict(name="nginx", proc="nginx", port=P["NGX_H1"], path="/"),
            dict(name="envoy", proc="envoy", port=P["ENV_A"], path="/"),
            dict(name="direct", proc=None, port=P["UP_H1"], path="/"),
        ]
        T["b"] = []
        if "tollgate-b" in pr:
            T["b"].append(dict(name="tollgate", proc="tollgate-b", port=P["TG_B"], path="/",
                               headers=[auth]))
        T["b"].append(dict(name="envoy", proc="envoy", port=P["ENV_B"], path="/", headers=[auth]))
        wanted = self.args.scenarios.split(",")
        if "b" in wanted:
            self.skip("(b) nginx", "nginx OSS has no JWT validation (auth_jwt is NGINX Plus only); "
                      "a limit_req-only config would not be equivalent, so nginx is left out of (b)")
        T["b"].append(dict(name="direct", proc=None, port=P["UP_H1"], path="/", headers=[auth]))
        T["c"] = []
        if "tollgate-c" in pr:
            T["c"].append(dict(name="tollgate", proc="tollgate-c", port=P["TG_C"],
                               path="/v1/hello", post_json=True))
        T["c"].append(dict(name="envoy", proc="envoy", port=P["ENV_C"], path="/v1/hello",
                           post_json=True))
        if "c" in wanted:
            self.skip("(c) nginx and direct", "nginx has no JSON→gRPC transcoder; the upstream "
                      "speaks only gRPC, so there is no direct JSON baseline")
        T["c-h2c"] = [dict(t) for t in T["c"]]
        T["d-h2c"] = [
            dict(name="tollgate", proc="tollgate", port=P["TG_A"], path="/h2c/hello"),
            dict(name="nginx", proc="nginx", port=P["NGX_H2"], path="/h2c/hello"),
            dict(name="envoy", proc="envoy", port=P["ENV_A"], path="/h2c/hello"),
            dict(name="direct", proc=None, port=P["UP_H2"], path="/h2c/hello"),
        ]
        T["d-grpc"] = [dict(t, path="/greeter.v1.Greeter/SayHello", grpc=True)
                       for t in T["d-h2c"]]
        self.targets = {k: v for k, v in T.items() if k.split("-")[0] in wanted}

    def smoke(self):
        """Every target must answer correctly before it is measured; failures are skipped."""
        for scen, targets in self.targets.items():
            keep = []
            for t in targets:
                ok, why = self.smoke_one(scen, t)
                if ok:
                    keep.append(t)
                else:
                    self.skip(f"({scen}) {t['name']}", f"smoke test failed: {why}")
            self.targets[scen] = keep

    def smoke_one(self, scen, t):
        url = f"http://127.0.0.1:{t['port']}{t['path']}"
        if scen in H2_SCENARIOS:
            argv = ["nghttp", "-v", "-t", "5"]
            if t.get("post_json"):
                argv += ["-d", f"{self.tmp}/hello.json", "-H", "content-type: application/json"]
            if t.get("grpc"):
                argv += ["-d", f"{self.tmp}/req.bin", "-H", "content-type: application/grpc",
                         "-H", "te: trailers"]
            p = run(argv + [url], 20)
            out = p.stdout
            if ":status: 200" not in out:
                return False, f"no 200 over h2c: {out[-300:]!r}"
            if t.get("grpc"):
                if "grpc-status: 0" not in out or "Hello World" not in out:
                    return False, f"no grpc-status 0 / reply: {out[-300:]!r}"
            elif t.get("post_json"):
                if not re.search(r'"message":\s*"Hello World"', out):
                    return False, f"no transcoded reply: {out[-300:]!r}"
            elif BODY.decode().strip() not in out:
                return False, "wrong body"
            return True, ""
        argv = ["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"]
        if t.get("post_json"):
            argv += ["-H", "content-type: application/json", "--data-binary", '{"name":"World"}']
        for h in t.get("headers", []):
            argv += ["-H", h]
        p = run(argv + [url], 20)
        body, _, code = p.stdout.rpartition("\n")
        if code != "200":
            return False, f"status {code}: {body[:200]!r}"
        if t.get("post_json"):
            if "Hello World" not in body:
                return False, f"body {body[:200]!r}"
        elif body.encode() != BODY:
            return False, f"body {body[:200]!r}"
        ka = keepalive_check(t["port"], t["path"], t.get("headers", []),
                             b'{"name":"World"}' if t.get("post_json") else None)
        if ka:
            self.note(f"({scen}) {t['name']}: {ka}; measured anyway, so its HTTP/1.1 figures "
                      "include a new TCP connection per request (wrk reports them as read errors)")
        if t.get("headers") and t["name"] != "direct":
            # jwt-auth must really be on: no token, no 200.
            p = run(["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", url], 20)
            if p.stdout != "401":
                return False, f"without a token the answer was {p.stdout}, not 401"
        return True, ""

    # ---- one load run -------------------------------------------------------------------

    def load_run(self, rnd, scen, t, tool):
        dur = self.dur
        url = f"http://127.0.0.1:{t['port']}{t['path']}"
        if tool == "wrk":
            argv = ["wrk", "-t2", "-c64", f"-d{dur}s", "--timeout", "5s", "--latency"]
            for h in t.get("headers", []):
                argv += ["-H", h]
            if t.get("post_json"):
                argv += ["-s", f"{self.tmp}/post-json.lua"]
            argv.append(url)
        elif tool == "oha":
            argv = [self.oha, "-q", str(self.args.rate), "-c", "64", "-z", f"{dur}s",
                    "--latency-correction", "--no-tui", "--output-format", "json", "-t", "5s", "-w"]
            for h in t.get("headers", []):
                argv += ["-H", h]
            if t.get("post_json"):
                argv += ["-m", "POST", "-T", "application/json", "-d", '{"name":"World"}']
            argv.append(url)
        else:  # h2load, h2c prior knowledge, 10 streams per connection
            argv = ["h2load", "-t1", "-c16", "-m10", "-D", str(dur)]
            if t.get("post_json"):
                argv += ["-d", f"{self.tmp}/hello.json", "-H", "content-type: application/json"]
            if t.get("grpc"):
                argv += ["-d", f"{self.tmp}/req.bin", "-H", "content-type: application/grpc",
                         "-H", "te: trailers"]
            argv.append(url)
        pids = tree_pids(self.procs[t["proc"]].pid) if t["proc"] else []
        up_pids = tree_pids(self.procs["upstream"].pid)
        c0, u0, s0 = cpu_ticks(pids), cpu_ticks(up_pids), cpu_stat()
        w0 = time.time()
        p = run(["timeout", str(dur + 30)] + argv, dur + 60, cpu=LOAD_CPU)
        w1 = time.time()
        c1, u1, s1 = cpu_ticks(pids), cpu_ticks(up_pids), cpu_stat()
        out = p.stdout + ("\n" + p.stderr if p.stderr else "")
        self.raw(f"r{rnd}-{scen}-{t['name']}-{tool}.txt", " ".join(argv) + "\n\n" + out)
        r = {"wrk": parse_wrk, "oha": parse_oha, "h2load": parse_h2load}[tool](p.stdout)
        r.update(round=rnd, scenario=scen, target=t["name"], tool=tool, rc=p.returncode,
                 wall_s=round(w1 - w0, 2),
                 cpu0_busy=round(busy_pct(s0, s1, 0), 1), cpu1_busy=round(busy_pct(s0, s1, 1), 1))
        if t["proc"] and tool != "oha":
            r["proxy_cpu_s"] = (c1 - c0) / CLK_TCK
            if r.get("requests"):
                r["cpu_us_per_req"] = r["proxy_cpu_s"] * 1e6 / r["requests"]
        if tool != "oha" and r.get("requests"):
            r["upstream_cpu_us_per_req"] = (u1 - u0) / CLK_TCK * 1e6 / r["requests"]
        if p.returncode != 0 or not (r.get("requests") or r.get("rps")):
            r["failed"] = True
            log(f"  {scen} {t['name']} {tool}: FAILED rc={p.returncode}: {out[-300:]!r}")
        else:
            log(f"  {scen:7} {t['name']:9} {tool:6} rps={r.get('rps') or 0:9.0f} "
                + (f"cpu/req={r['cpu_us_per_req']:6.1f}us " if 'cpu_us_per_req' in r else "")
                + (f"p99={r['p99_ms']:.2f}ms " if r.get('p99_ms') else "")
                + f"cpu0={r['cpu0_busy']}% cpu1={r['cpu1_busy']}%"
                + (f" ERR non2xx={r['non2xx']} err={r['errors']}"
                   if r.get("non2xx") or r.get("errors") else ""))
        self.res["runs"].append(r)
        time.sleep(1.0)
        return r

    def warmup(self):
        for scen, targets in self.targets.items():
            for t in targets:
                tool = "h2load" if scen in H2_SCENARIOS else "wrk"
                url = f"http://127.0.0.1:{t['port']}{t['path']}"
                if tool == "wrk":
                    argv = ["wrk", "-t2", "-c64", "-d1s"] + sum(
                        (["-H", h] for h in t.get("headers", [])), [])
                    if t.get("post_json"):
                        argv += ["-s", f"{self.tmp}/post-json.lua"]
                else:
                    argv = ["h2load", "-t1", "-c16", "-m10", "-n", "5000"]
                    if t.get("post_json"):
                        argv += ["-d", f"{self.tmp}/hello.json", "-H",
                                 "content-type: application/json"]
                    if t.get("grpc"):
                        argv += ["-d", f"{self.tmp}/req.bin", "-H",
                                 "content-type: application/grpc", "-H", "te: trailers"]
                run(["timeout", "30"] + argv + [url], 60, cpu=LOAD_CPU)

    def rounds_loop(self):
        for rnd in range(1, self.rounds + 1):
            la = loadavg()
            top = top_consumers()
            self.res["rounds_meta"].append({"round": rnd, "loadavg1": la, "top": top,
                                            "time": time.strftime("%H:%M:%S")})
            log(f"round {rnd}/{self.rounds}: load average {la:.2f}; busiest: {', '.join(top)}")
            for scen, targets in self.targets.items():
                if scen in H2_SCENARIOS:
                    for t in targets:
                        self.load_run(rnd, scen, t, "h2load")
                else:
                    for t in targets:
                        self.load_run(rnd, scen, t, "wrk")
                    for t in targets:
                        self.load_run(rnd, scen, t, "oha")

    def otlp_exports(self):
        """Tracing really exported something: the OTLP sink's access log, by user agent."""
        path = os.path.join(self.tmp, "otlp.access.log")
        agents = {}
        if os.path.exists(path):
            for line in open(path, errors="replace"):
                m = re.search(r'"(POST|GET|PUT) (\S+) [^"]*" (\d+) \d+ "[^"]*" "([^"]*)"', line)
                if m:
                    key = f"{m.group(4)[:40]} {m.group(1)} {m.group(2)} -> {m.group(3)}"
                    agents[key] = agents.get(key, 0) + 1
        self.res["otlp_exports"] = agents
        self.note("OTLP export requests received by the sink during the run (tracing check): "
                  + ("; ".join(f"{k}: {v}" for k, v in agents.items()) or "none"))

    # ---- memory with idle keep-alive connections -----------------------------------------

    def memory(self):
        n = self.mem_n
        for name, port, path in (("tollgate", self.p["TG_A"], "/"),
                                 ("nginx", self.p["NGX_H1"], "/"),
                                 ("envoy", self.p["ENV_A"], "/"),
                                 ("upstream", self.p["UP_H1"], "/")):
            pids = tree_pids(self.procs[name].pid)
            before = mem_kib(pids)
            p = subprocess.Popen(
                ["taskset", "-c", LOAD_CPU, sys.executable, os.path.join(HERE, "conns.py"),
                 str(port), "-n", str(n), "--path", path, "--hold", "120"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            PROCS.procs.append(("conns", p))
            line = ""
            deadline = time.time() + 150
            while time.time() < deadline:
                line = p.stdout.readline()
                if line.startswith("READY") or not line:
                    break
            time.sleep(2.0)
            rss, pss = mem_kib(tree_pids(self.procs[name].pid))
            opened = int(line.split()[1]) if line.startswith("READY") else 0
            try:
                p.stdin.write("\n")
                p.stdin.flush()
            except BrokenPipeError:
                pass
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                PROCS.stop(p)
            rec = {"process": name, "state": f"{n} idle keep-alive connections",
                   "connections_open": opened, "rss_kib": rss, "pss_kib": pss,
                   "rss_before_kib": before[0]}
            if opened:
                rec["kib_per_conn"] = (rss - before[0]) / opened
            self.res["memory"].append(rec)
            log(f"  memory {name}: {opened}/{n} conns open, RSS {before[0]} -> {rss} KiB")
            time.sleep(3.0)

    # ---- instructions per request (callgrind) --------------------------------------------

    def callgrind(self):
        off, tag = 100, "cg"
        v = self.values(off, tag, master="off")
        for k in ("TG_A", "TG_B", "NGX_H1", "NGX_H2", "ENV_A", "ENV_B", "ENV_C"):
            if not port_free(v[k]):
                self.skip("callgrind", f"port {v[k]} in use")
                return
        cfg = self.write_configs(off, tag, master="off")
        cgdir = os.path.join(self.tmp, "cg")
        os.makedirs(cgdir, exist_ok=True)
        auth = ["-H", f"Authorization: Bearer {self.token}"]
        json_body = ["-d", f"{self.tmp}/hello.json", "-H", "content-type: application/json"]
        grpc_body = ["-m", "10", "-d", f"{self.tmp}/req.bin", "-H",
                     "content-type: application/grpc", "-H", "te: trailers"]
        envoy_argv = [self.envoy, "-c", cfg["envoy"], "--concurrency", "1", "-l", "warn",
                      "--disable-hot-restart", "--log-path", f"{self.tmp}/envoy-cg.log"]
        nginx_argv = ["nginx", "-c", cfg["nginx"], "-p", self.tmp]
        tg = lambda key: [self.tollgate, "-c", cfg[key], "run"]
        gp = "/greeter.v1.Greeter/SayHello"
        # (scenario, target, argv, port, path, h2load args, HTTP/1.1?, --fair-sched)
        plan = [
            ("a", "tollgate", tg("tg_a"), v["TG_A"], "/", [], True, True),
            ("a", "nginx", nginx_argv, v["NGX_H1"], "/", [], True, False),
            ("a", "envoy", envoy_argv, v["ENV_A"], "/", [], True, False),
        ]
        if "tg_b" in cfg:
            plan.append(("b", "tollgate", tg("tg_b"), v["TG_B"], "/", auth, True, True))
        plan.append(("b", "envoy", envoy_argv, v["ENV_B"], "/", auth, True, False))
        if "tg_c" in cfg:
            plan.append(("c-h2c", "tollgate", tg("tg_c"), v["TG_C"], "/v1/hello", json_body,
                         False, True))
        plan.append(("c-h2c", "envoy", envoy_argv, v["ENV_C"], "/v1/hello", json_body, False,
                     False))
        plan += [
            ("d-grpc", "tollgate", tg("tg_a"), v["TG_A"], gp, grpc_body, False, True),
            ("d-grpc", "nginx", nginx_argv, v["NGX_H2"], gp, grpc_body, False, False),
            ("d-grpc", "envoy", envoy_argv, v["ENV_A"], gp, grpc_body, False, False),
        ]
        wanted = self.args.scenarios.split(",")
        only = self.args.callgrind_only.split(",") if self.args.callgrind_only else None
        for item in plan:
            scen, name = item[0], item[1]
            if scen.split("-")[0] not in wanted or (only and f"{scen}:{name}" not in only):
                continue
            if not any(t["name"] == name for t in self.targets.get(scen, [])):
                self.skip(f"callgrind ({scen}) {name}", "the target failed its smoke test")
                continue
            self.callgrind_one(cgdir, *item)

    def callgrind_one(self, cgdir, scen, name, argv, port, path, hargs, h1, fair):
        base = os.path.join(cgdir, f"{scen}-{name}")
        vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={base}.%p",
              "--dump-instr=no", "--collect-systime=no"]
        if fair:
            vg.append("--fair-sched=yes")
        log(f"callgrind ({scen}) {name}: starting under valgrind")
        p = PROCS.start(f"cg-{name}", vg + argv, PROXY_CPU, f"{base}.out")
        rec = {"scenario": scen, "target": name, "n": self.cg_n, "reps": [],
               "load": " ".join(
                   ["h2load"] + (["--h1"] if h1 else []) + ["-c16"]
                   + ["'Authorization: Bearer …'" if a.startswith("Authorization")
                      else os.path.basename(a) if a.startswith(self.tmp)
                      else (f"'{a}'" if " " in a else a) for a in hargs])}
        try:
            if not wait_port(port, 300, p):
                tail = open(f"{base}.out", errors="replace").read()[-1500:]
                raise RuntimeError(f"did not open its port under valgrind: {tail}")
            url = f"http://127.0.0.1:{port}{path}"
            h2 = ["h2load"] + (["--h1"] if h1 else []) + ["-t1", "-c16"] + hargs
            w = run(["timeout", "600"] + h2 + ["-n", str(self.cg_warm), url], 700, cpu=LOAD_CPU)
            if "succeeded" not in w.stdout:
                raise RuntimeError(f"warm-up failed: {w.stdout[-300:]} {w.stderr[-300:]}")
            seen = set(glob.glob(f"{base}.*"))
            for rep in (1, 2):
                z = run(["callgrind_control", "-z", str(p.pid)], 120)
                if z.returncode != 0:
                    raise RuntimeError(f"callgrind_control -z: {z.stdout} {z.stderr}")
                t0 = time.time()
                h = run(["timeout", "900"] + h2 + ["-n", str(self.cg_n), url], 1000,
                        cpu=LOAD_CPU)
                t1 = time.time()
                hr = parse_h2load(h.stdout)
                d = run(["callgrind_control", "-d", str(p.pid)], 120)
                if d.returncode != 0:
                    raise RuntimeError(f"callgrind_control -d: {d.stdout} {d.stderr}")
                time.sleep(1.0)
                new = sorted(set(glob.glob(f"{base}.*")) - seen - {f"{base}.out"},
                             key=os.path.getmtime)
                seen |= set(new)
                dumps = [f for f in new if not f.endswith(".out")]
                if not dumps:
                    raise RuntimeError("no dump file after callgrind_control -d")
                total = 0
                for f in dumps:
                    total += callgrind_total(f)
                ok = hr.get("requests") or 0
                rec["reps"].append({"ir": total, "requests": ok, "non2xx": hr.get("non2xx"),
                                    "ir_per_req": total / ok if ok else None,
                                    "wall_s": round(t1 - t0, 1), "dump": os.path.basename(dumps[-1])})
                log(f"  rep {rep}: {total} Ir / {ok} req = "
                    f"{(total / ok if ok else 0):,.0f} Ir/req ({t1 - t0:.0f}s)")
                if hr.get("non2xx") or hr.get("errors"):
                    self.raw(f"callgrind-{scen}-{name}-rep{rep}-h2load.txt", h.stdout + h.stderr)
                    raise RuntimeError(f"h2load saw errors/non-2xx under valgrind: {hr}")
                if rep == 2 and name == "tollgate":
                    self.profile(scen, dumps[-1])
            a, b = (r["ir_per_req"] for r in rec["reps"])
            if a and b:
                rec["ir_per_req"] = (a + b) / 2
                rec["agreement_pct"] = abs(a - b) / min(a, b) * 100
                rec["agrees"] = rec["agreement_pct"] <= 0.5
        except Exception as e:
            rec["error"] = str(e)[:600]
            self.skip(f"callgrind ({scen}) {name}", str(e)[:300])
        finally:
            PROCS.stop(p, grace=60)
        self.res["callgrind"].append(rec)

    def profile(self, scen, dump):
        keep = os.path.join(self.out, f"callgrind-{scen}-tollgate.out")
        shutil.copy(dump, keep)
        prof = {}
        for mode in ("yes", "no"):
            a = run(["callgrind_annotate", f"--inclusive={mode}", "--threshold=100", keep], 300)
            self.raw(f"callgrind-annotate-{scen}-tollgate-{'incl' if mode == 'yes' else 'self'}.txt",
                     a.stdout)
            prof["inclusive" if mode == "yes" else "self"] = parse_annotate(a.stdout, 60)
        # Who calls the most expensive functions (self cost): memcpy, malloc, ...
        a = run(["callgrind_annotate", "--tree=caller", "--threshold=100", keep], 300)
        self.raw(f"callgrind-annotate-{scen}-tollgate-callers.txt", a.stdout)
        prof["callers"] = {}
        for row in [r for r in prof["self"] if not SCAFFOLD.search(r["fn"])][:6]:
            prof["callers"][row["fn"]] = parse_callers(a.stdout, row["fn"], 4)
        self.res["profile"][scen] = prof

    # ---- main ---------------------------------------------------------------------------

    def main(self):
        # Run a private copy: other people's `cargo build` may replace target/release/tollgate
        # during the run, and the callgrind phase starts tollgate again at the end.
        built = self.tollgate
        self.tollgate = os.path.join(self.tmp, "tollgate")
        shutil.copy2(built, self.tollgate)
        self.environment()
        self.res["env"]["tollgate_binary_sha256"] = subprocess.run(
            ["sha256sum", self.tollgate], capture_output=True, text=True).stdout.split()[0][:16]
        if not self.quick and not self.args.no_wait:
            la = loadavg()
            self.res["loadavg_at_start"] = la
            if la > 1.5:
                log(f"load average {la:.2f} > 1.5: waiting up to 10 minutes for it to drop")
                deadline = time.time() + 600
                while time.time() < deadline and loadavg() > 1.5:
                    time.sleep(15)
                la2 = loadavg()
                waited = 600 - max(0, deadline - time.time())
                msg = (f"load average was {la:.2f} at start; waited {waited:.0f} s, "
                       f"it was {la2:.2f} when the run began")
                if la2 > 1.5:
                    msg += " (still above 1.5: ran anyway)"
                self.note(msg)
        self.fixtures()
        self.start_all()
        self.define_targets()
        self.smoke()
        log("warm-up")
        if not self.args.no_rounds:
            self.warmup()
            self.rounds_loop()
        self.otlp_exports()
        if not self.args.no_memory:
            log("memory with idle keep-alive connections")
            self.memory()
        self.save()
        # The proxies are done; the upstream stays up for the callgrind runs.
        for name, p in list(self.procs.items()):
            if name != "upstream":
                PROCS.stop(p)
        if not self.args.no_callgrind:
            log("instructions per request (callgrind)")
            self.callgrind()
        self.res["finished"] = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y%m%dT%H%M%SZ")
        self.save()
        report = make_report(self.res)
        with open(os.path.join(self.out, "report.md"), "w") as f:
            f.write(report)
        latest = os.path.join(self.args.results, "latest")
        if os.path.islink(latest) or os.path.exists(latest):
            os.remove(latest)
        os.symlink(os.path.basename(self.out), latest)
        if self.args.write or (not self.quick and not self.args.no_write):
            write_benchmarks(os.path.join(REPO, "BENCHMARKS.md"), report)
            log("BENCHMARKS.md updated")
        log(f"results: {self.out}/report.md")

    def save(self):
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(self.res, f, indent=1)


def keepalive_check(port, path, headers, body):
    """Two requests on one HTTP/1.1 connection. None when both are answered with a framed
    response on the same connection, else what went wrong."""
    req = f"{'POST' if body else 'GET'} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    for h in headers:
        req += h + "\r\n"
    if body:
        req += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    req = req.encode() + b"\r\n" + (body or b"")
    try:
        with socket.create_connection(("127.0.0.1", port), 5) as s:
            s.settimeout(5)
            f = s.makefile("rb")
            for i in (1, 2):
                s.sendall(req)
                status = f.readline()
                if not status:
                    return f"the server closed the connection before answering request {i}"
                hdrs = {}
                while True:
                    line = f.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = line.decode("latin-1").partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                if "content-length" in hdrs:
                    f.read(int(hdrs["content-length"]))
                elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int(f.readline().split(b";")[0], 16)
                        f.read(size + 2)
                        if size == 0:
                            break
                else:
                    return ("its HTTP/1.1 response has neither Content-Length nor chunked "
                            f"encoding (Connection: {hdrs.get('connection', '-')}) and the "
                            "connection is closed after it")
        return None
    except Exception as e:
        return f"keep-alive check failed: {e}"


def callgrind_total(path):
    with open(path, errors="replace") as f:
        summary = None
        for line in f:
            if line.startswith("totals:"):
                return int(line.split()[1])
            if line.startswith("summary:"):
                summary = int(line.split()[1])
    if summary is None:
        raise RuntimeError(f"{path}: no totals/summary line")
    return summary


# Thread start-up and tokio scheduler frames: ~100 % inclusive, and callgrind also shows them
# with bogus "self" cost when a dump is taken while they are on the stack. Left out of the tables.
SCAFFOLD = re.compile(
    r"clone\.S:clone|pthread_create\.c:start_thread|Thread>::new::thread_start|"
    r"call_once\{\{vtable\.shim\}\}|__rust_begin_short_backtrace|"
    r"tokio::runtime::(blocking::pool|scheduler|task::(core|harness|raw|new_task))|"
    r"PROGRAM TOTALS"
)
ANNOTATE_ROW = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*?)\s*$")


def parse_annotate(text, n):
    """Rows `Ir (pct) file:function [object]` of callgrind_annotate's function table."""
    rows, in_table = [], False
    for line in text.splitlines():
        if line.startswith("Ir") and "file:function" in line:
            in_table = True
            continue
        if not in_table:
            continue
        m = ANNOTATE_ROW.match(line)
        if m:
            rows.append({"ir": int(m.group(1).replace(",", "")), "fn": m.group(2)})
            if len(rows) >= n:
                break
        elif rows and not line.strip():
            break
    return rows


def parse_callers(text, fn, n):
    """From `callgrind_annotate --tree=caller`: the biggest callers (`<` lines) of `fn`."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*[\d,]+\s+\(\s*[\d.]+%\)\s+\*\s+(.*?)\s*$", line)
        if m and m.group(1) == fn:
            rows, j = [], i - 1
            while j >= 0 and re.match(r"^\s*[\d,]+\s+\(\s*[\d.]+%\)\s+<", lines[j]):
                c = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+<\s+(.*?)\s*$", lines[j])
                rows.append({"ir": int(c.group(1).replace(",", "")), "fn": c.group(2)})
                j -= 1
            return sorted(rows, key=lambda r: -r["ir"])[:n]
    return []


def short_fn(fn):
    """`???:name [/path/obj]` -> `name` (keeps the library for libc)."""
    m = re.match(r"^(?:.*?:)?(.*?)\s*\[(.*)\]$", fn)
    if not m:
        return fn
    name, obj = m.group(1), m.group(2)
    if "tollgate" not in os.path.basename(obj):
        name += f" ({os.path.basename(obj)})"
    return name


# --------------------------------------------------------------------------------------------
# Report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f1(x, suffix=""):
    return "–" if x is None else f"{x:,.1f}{suffix}"


def f0(x):
    return "–" if x is None else f"{x:,.0f}"


def f2(x):
    return "–" if x is None else f"{x:.2f}"


def make_report(res):
    L = []
    e = res["env"]
    runs = [r for r in res["runs"] if not r.get("failed")]
    failed = [r for r in res["runs"] if r.get("failed")]
    L.append(f"Run `{res['command']}` — started {res['started']} (UTC), finished "
             f"{res.get('finished', '?')}; {res['rounds']} round(s) of {res['duration_s']} s runs"
             + (" (**--quick smoke run: not for quoting**)" if res["quick"] else "") + ".")
    L.append("")
    L.append("### Machine and versions")
    L.append("")
    L.append("| | |\n|---|---|")
    for k, label in (("nproc", "nproc"), ("cpu_model", "CPU"), ("kernel", "kernel"),
                     ("os", "OS"), ("memory", "memory"), ("tollgate_commit", "tollgate commit"),
                     ("tollgate_binary_mtime", "tollgate binary built"),
                     ("tollgate_binary_sha256", "tollgate binary sha256 (first 16)"),
                     ("rustc", "rustc"),
                     ("pingora", "pingora"), ("nginx", "nginx"), ("envoy", "Envoy"),
                     ("wrk", "wrk"), ("h2load", "h2load"), ("oha", "oha"),
                     ("valgrind", "valgrind"), ("python", "python")):
        L.append(f"| {label} | {e.get(k, '?')} |")
    if e.get("tollgate_dirty_files"):
        L.append(f"| uncommitted changes in the built tree | "
                 f"{', '.join(x.strip() for x in e['tollgate_dirty_files'][:10])} |")
    L.append("")
    L.append("### Load during the run")
    L.append("")
    if "loadavg_at_start" in res:
        L.append(f"1-minute load average when the run was started: {res['loadavg_at_start']:.2f}.")
        L.append("")
    L.append("| round | time | 1-min load average before the round | busiest processes (1 s sample) |")
    L.append("|---|---|---|---|")
    for m in res["rounds_meta"]:
        L.append(f"| {m['round']} | {m['time']} | {m['loadavg1']:.2f} | {'; '.join(m['top'])} |")
    L.append("")
    for n in res["notes"]:
        L.append(f"- {n}")
    if res["notes"]:
        L.append("")

    scen_title = {
        "a": "(a) plain route — HTTP/1.1, `GET /` → 13-byte body",
        "b": "(b) plain route + jwt-auth (RS256) + rate limit (never triggers) + tracing at 1 %",
        "c": "(c) JSON → gRPC unary transcoding (`POST /v1/hello`), HTTP/1.1 clients",
        "c-h2c": "(c) JSON → gRPC unary transcoding (`POST /v1/hello`), h2c clients "
                 "(`h2load -m 10`)",
        "d-h2c": "(d) h2c passthrough (`h2load -m 10`, GET)",
        "d-grpc": "(d) gRPC unary passthrough (`h2load -m 10`, pre-framed body)",
    }
    scens = []
    for r in res["runs"]:
        if r["scenario"] not in scens:
            scens.append(r["scenario"])
    order = ["tollgate", "nginx", "envoy", "direct"]

    def by(scen, tool):
        return [r for r in runs if r["scenario"] == scen and r["tool"] == tool]

    for scen in scens:
        L.append(f"### {scen_title.get(scen, scen)}")
        L.append("")
        main_tool = "h2load" if scen in H2_SCENARIOS else "wrk"
        rs = by(scen, main_tool)
        targets = [t for t in order if any(r["target"] == t for r in rs)]
        # nginx of the same round, for ratios
        ngx = {r["round"]: r.get("cpu_us_per_req") for r in rs if r["target"] == "nginx"}
        L.append(f"CPU cost per request (`{main_tool}`"
                 + (" -t2 -c64" if main_tool == "wrk" else " -c16 -m10")
                 + f", {res['duration_s']} s; proxy on CPU 1, load generator + upstream on CPU 0). "
                 "CPU µs/req = the proxy process's utime+stime over the run ÷ requests completed. "
                 "req/s is marked “≥ harness limit” when CPU 0 was ≥ 95 % busy.")
        L.append("")
        L.append("Per round:")
        L.append("")
        L.append("| round | target | requests | req/s | CPU µs/req | ÷ nginx (same round) | "
                 "CPU 0 busy | CPU 1 busy | upstream CPU µs/req | errors / non-2xx |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(rs, key=lambda r: (r["round"], order.index(r["target"]))):
            ratio = None
            if r.get("cpu_us_per_req") and ngx.get(r["round"]):
                ratio = r["cpu_us_per_req"] / ngx[r["round"]]
            rps = f0(r.get("rps")) + (" (≥ harness limit)" if r["cpu0_busy"] >= 95 else "")
            L.append(f"| {r['round']} | {r['target']} | {f0(r.get('requests'))} | {rps} | "
                     f"{f1(r.get('cpu_us_per_req'))} | {f2(ratio)} | {r['cpu0_busy']:.0f} % | "
                     f"{r['cpu1_busy']:.0f} % | {f1(r.get('upstream_cpu_us_per_req'))} | "
                     f"{r.get('errors', 0)} / {r.get('non2xx', 0)} |")
        L.append("")
        L.append("Medians over rounds:")
        L.append("")
        L.append("| target | CPU µs/req | ÷ nginx (median of same-round ratios) | req/s | "
                 "CPU 0 busy |" + (" wrk p50 | wrk p99 |" if main_tool == "wrk" else ""))
        L.append("|---|---|---|---|---|" + ("---|---|" if main_tool == "wrk" else ""))
        for t in targets:
            tr = [r for r in rs if r["target"] == t]
            ratios = [r["cpu_us_per_req"] / ngx[r["round"]] for r in tr
                      if r.get("cpu_us_per_req") and ngx.get(r["round"])]
            c0 = med([r["cpu0_busy"] for r in tr])
            rps = f0(med([r.get("rps") for r in tr])) + (" (≥ harness limit)" if c0 and c0 >= 95 else "")
            row = (f"| {t} | {f1(med([r.get('cpu_us_per_req') for r in tr]))} | "
                   f"{f2(med(ratios)) if ratios else '–'} | {rps} | {f0(c0)} % |")
            if main_tool == "wrk":
                row += (f" {f2(med([r.get('p50_ms') for r in tr]))} ms | "
                        f"{f2(med([r.get('p99_ms') for r in tr]))} ms |")
            L.append(row)
        L.append("")
        oh = by(scen, "oha")
        if oh:
            L.append(f"Latency at a fixed rate (`oha -q {8000} -c 64 -z {res['duration_s']}s "
                     "--latency-correction`), ms:")
            L.append("")
            L.append("| round | target | achieved req/s | p50 | p99 | p99.9 | CPU 0 busy | "
                     "non-2xx / errors |")
            L.append("|---|---|---|---|---|---|---|---|")
            for r in sorted(oh, key=lambda r: (r["round"], order.index(r["target"]))):
                L.append(f"| {r['round']} | {r['target']} | {f0(r.get('rps'))} | "
                         f"{f2(r.get('p50_ms'))} | {f2(r.get('p99_ms'))} | {f2(r.get('p999_ms'))} | "
                         f"{r['cpu0_busy']:.0f} % | {r.get('non2xx', 0)} / {r.get('errors', 0)} |")
            L.append("")
            L.append("| target (median) | p50 | p99 | p99.9 |")
            L.append("|---|---|---|---|")
            for t in targets:
                tr = [r for r in oh if r["target"] == t]
                L.append(f"| {t} | {f2(med([r.get('p50_ms') for r in tr]))} | "
                         f"{f2(med([r.get('p99_ms') for r in tr]))} | "
                         f"{f2(med([r.get('p999_ms') for r in tr]))} |")
            L.append("")
        bad = [r for r in rs + oh if r.get("errors") or r.get("non2xx")]
        if bad:
            L.append("**Errors were seen** in: " + ", ".join(
                f"round {r['round']} {r['target']} {r['tool']} ({r.get('errors')} errors, "
                f"{r.get('non2xx')} non-2xx)" for r in bad))
            L.append("")
    if "a" in scens and "b" in scens:
        L.append("### Cost of (b)'s plugins: (b) − (a), medians of wrk runs")
        L.append("")
        L.append("| target | (a) CPU µs/req | (b) CPU µs/req | added µs/req | (b) ÷ (a) |")
        L.append("|---|---|---|---|---|")
        for t in ("tollgate", "envoy"):
            a = med([r.get("cpu_us_per_req") for r in by("a", "wrk") if r["target"] == t])
            b = med([r.get("cpu_us_per_req") for r in by("b", "wrk") if r["target"] == t])
            if a and b:
                L.append(f"| {t} | {f1(a)} | {f1(b)} | {f1(b - a)} | {b / a:.2f} |")
        L.append("")
    if failed:
        L.append("### Failed runs")
        L.append("")
        for r in failed:
            L.append(f"- round {r['round']} ({r['scenario']}) {r['target']} {r['tool']}: rc {r['rc']}")
        L.append("")

    if res["callgrind"]:
        L.append("### Instructions per request (callgrind, user space)")
        L.append("")
        L.append("The proxy alone under `valgrind --tool=callgrind` on CPU 1 (tollgate with "
                 "`--fair-sched=yes`); warm-up with `h2load --h1 -c16`, counters zeroed with "
                 "`callgrind_control -z`, `h2load --h1 -n N -c 16`, dumped with "
                 "`callgrind_control -d`; Ir total of the dump (all threads) ÷ N. Twice.")
        L.append("")
        L.append("| scenario | target | load | N | rep 1 Ir/req | rep 2 Ir/req | "
                 "agree within 0.5 %? | Ir/req (mean) | ÷ nginx | ÷ Envoy |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        ref = {}
        for c in res["callgrind"]:
            ref[(c["scenario"], c["target"])] = c.get("ir_per_req")
        for c in res["callgrind"]:
            reps = c.get("reps", [])
            r1 = f0(reps[0]["ir_per_req"]) if len(reps) > 0 else "–"
            r2 = f0(reps[1]["ir_per_req"]) if len(reps) > 1 else "–"
            agree = (f"{'yes' if c['agrees'] else 'NO'} ({c['agreement_pct']:.2f} %)"
                     if "agrees" in c else ("error: " + c.get("error", "?")[:120]))
            x = c.get("ir_per_req")
            rn, re_ = ref.get((c["scenario"], "nginx")), ref.get((c["scenario"], "envoy"))
            L.append(f"| ({c['scenario']}) | {c['target']} | `{c.get('load', '')}` | {c['n']:,} | "
                     f"{r1} | {r2} | {agree} | {f0(x)} | {f2(x / rn) if x and rn else '–'} | "
                     f"{f2(x / re_) if x and re_ else '–'} |")
        L.append("")

    if res["memory"]:
        L.append("### Memory")
        L.append("")
        L.append("| process | state | connections open | RSS MiB | PSS MiB | KiB per connection |")
        L.append("|---|---|---|---|---|---|")
        for m in res["memory"]:
            L.append(f"| {m['process']} | {m['state']} | {m.get('connections_open', '–')} | "
                     f"{m['rss_kib'] / 1024:.1f} | {m['pss_kib'] / 1024:.1f} | "
                     f"{f1(m.get('kib_per_conn'))} |")
        L.append("")
        L.append("RSS sums the process tree (nginx: master + worker); PSS splits shared pages. "
                 "“KiB per connection” = (RSS with the connections − RSS just before) ÷ connections. "
                 "`upstream` is the nginx upstream itself (the “direct” row).")
        L.append("")

    for scen, prof in res.get("profile", {}).items():
        L.append(f"### Where tollgate spends its instructions ({scen})")
        L.append("")
        total = res_total(res, scen)
        n = next((c["n"] for c in res["callgrind"] if c["target"] == "tollgate"
                  and c["scenario"] == scen), None)
        for kind in ("inclusive", "self"):
            rows = [r for r in prof.get(kind, []) if not SCAFFOLD.search(r["fn"])][:15]
            if not rows:
                continue
            L.append(f"Top {len(rows)} functions by {kind} cost (`callgrind_annotate "
                     f"--inclusive={'yes' if kind == 'inclusive' else 'no'}` on the rep-2 dump; "
                     "thread start-up and tokio scheduler frames left out):")
            L.append("")
            L.append("| Ir per request | % of total | function |")
            L.append("|---|---|---|")
            for r in rows:
                fn = short_fn(r["fn"]).replace("|", "\\|")
                if len(fn) > 150:
                    fn = fn[:147] + "..."
                pct = f"{100 * r['ir'] / total:.1f} %" if total else "–"
                L.append(f"| {f0(r['ir'] / n) if n else '–'} | {pct} | `{fn}` |")
            L.append("")
        if prof.get("callers"):
            L.append("Biggest callers of the most expensive functions (self cost):")
            L.append("")
            L.append("| function | caller | Ir per request |")
            L.append("|---|---|---|")
            for fn, callers in prof["callers"].items():
                for c in callers:
                    L.append(f"| `{short_fn(fn)[:70]}` | `{short_fn(c['fn'])[:110]}` | "
                             f"{f0(c['ir'] / n) if n else '–'} |")
            L.append("")

    if res["skipped"]:
        L.append("### Skipped")
        L.append("")
        for s in res["skipped"]:
            L.append(f"- **{s['what']}**: {s['why']}")
        L.append("")
    return "\n".join(L) + "\n"


def res_total(res, scen):
    for c in res["callgrind"]:
        if c["target"] == "tollgate" and c["scenario"] == scen and len(c.get("reps", [])) > 1:
            return c["reps"][1]["ir"]
    return None


BEGIN = "<!-- BEGIN GENERATED: benches/load/run.sh writes between these markers -->"
END = "<!-- END GENERATED -->"


def write_benchmarks(path, report):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    block = f"{BEGIN}\n\n{report}\n{END}"
    if BEGIN in text and END in text:
        pre = text[: text.index(BEGIN)]
        post = text[text.index(END) + len(END):]
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round of 2 s runs")
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run (default 10)")
    ap.add_argument("--rate", type=int, default=8000, help="oha fixed rate (default 8000)")
    ap.add_argument("--scenarios", default="a,b,c,d", help="subset of a,b,c,d")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    ap.add_argument("--no-rounds", action="store_true", help="skip the load rounds (debugging)")
    ap.add_argument("--callgrind-only", default="", help="e.g. a:tollgate,b:envoy")
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for the load average to drop below 1.5")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md even with --quick")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--base-port", type=int, default=24000,
                    help="first of ~140 loopback ports (keep below the ephemeral range)")
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--oha", required=True)
    args, _ = ap.parse_known_args()
    args.argv = [a for a in sys.argv[1:] if not a.startswith(("--envoy", "--oha"))
                 and a not in (args.envoy, args.oha)]
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    Bench(args).main()


if __name__ == "__main__":
    main()
