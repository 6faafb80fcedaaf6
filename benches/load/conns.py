#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections to 127.0.0.1:PORT, send one GET on each (so every
connection has been through a full request/response and sits idle in keep-alive), print
"READY <open> <failed>", then hold them until a line arrives on stdin (or --hold seconds pass),
and close them all.

Used by bench.py to measure a proxy's RSS with 10,000 idle keep-alive connections, and with
--tls by tls.py for idle TLS connections (TLS 1.3, no certificate check: loopback bench only).
Bounded: connects with a 10 s timeout each, reads with a 10 s timeout, holds at most --hold s.
"""

import argparse
import asyncio
import resource
import sys


async def one(port, path, host, sem, timeout, tls=None):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=tls), timeout
            )
        except Exception:
            return None
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), timeout)
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                return None
        except Exception:
            writer.close()
            return None
        return writer


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--path", default="/")
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--hold", type=float, default=120.0)
    ap.add_argument("--tls", action="store_true", help="connect with TLS 1.3 (HTTP/1.1 by ALPN)")
    args = ap.parse_args()
    tls = None
    if args.tls:
        import ssl

        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        tls.minimum_version = ssl.TLSVersion.TLSv1_3
        tls.set_alpn_protocols(["http/1.1"])

    want = args.n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))

    sem = asyncio.Semaphore(args.concurrency)
    host = f"127.0.0.1:{args.port}"
    results = await asyncio.gather(
        *(one(args.port, args.path, host, sem, 10.0, tls) for _ in range(args.n))
    )
    writers = [w for w in results if w is not None]
    print(f"READY {len(writers)} {args.n - len(writers)}", flush=True)

    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), args.hold)
    except asyncio.TimeoutError:
        pass
    for w in writers:
        w.close()
    await asyncio.sleep(0.2)


if __name__ == "__main__":
    asyncio.run(main())
