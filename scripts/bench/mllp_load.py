#!/usr/bin/env python3
"""HL7 v2 over MLLP under load: CONNECTIONS connections (default 8) each send MESSAGES
messages one after the other (each waits for its ACK, as MLLP senders do) to a running
gateway, and the rate of AA acknowledgments is reported. Each patient gets an A01 and then
A08s, so every message is translated, matched on PID-3 by conditional update, stored, logged
and acknowledged after its commit.

    python3 scripts/bench/mllp_load.py HOST PORT [CONNECTIONS] [MESSAGES_PER_CONNECTION]

Standard library only. Exits non-zero if any message is not answered AA.
"""

import asyncio
import sys
import time
import uuid

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def message(event, control_id, mrn, given):
    return (
        "MSH|^~\\&|LOADGEN|BENCH|GATEWAY|HOSP|20260101120000||ADT^{event}^ADT_A01|{cid}|P|2.5.1\r"
        "EVN|{event}|20260101120000\r"
        "PID|1||{mrn}^^^BENCH^MR||Loadtest^{given}||19800101|F|||1 Main St^^Springfield^IL^62701\r"
        "PV1|1|O|CLINIC^1^A\r"
    ).format(event=event, cid=control_id, mrn=mrn, given=given).encode()


async def sender(host, port, connection, count, run, latencies):
    reader, writer = await asyncio.open_connection(host, port)
    buffer = b""
    failures = 0
    # a patient per 10 messages: one A01, then nine A08
    for n in range(count):
        mrn = f"{run}-{connection}-{n // 10}"
        event = "A01" if n % 10 == 0 else "A08"
        started = time.perf_counter()
        writer.write(VT + message(event, f"{run}-{connection}-{n}", mrn, f"G{n}") + FS + CR)
        await writer.drain()
        while FS not in buffer:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError("the gateway closed the connection")
            buffer += chunk
        frame, buffer = buffer.split(FS, 1)
        buffer = buffer.lstrip(CR)
        latencies.append(time.perf_counter() - started)
        if b"MSA|AA|" not in frame:
            failures += 1
            if failures <= 3:
                print(frame.replace(CR, b"\n").decode(errors="replace"), file=sys.stderr)
    writer.close()
    await writer.wait_closed()
    return failures


async def main():
    host, port = sys.argv[1], int(sys.argv[2])
    connections = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    per_connection = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    run = uuid.uuid4().hex[:8]
    latencies = []
    started = time.perf_counter()
    failures = await asyncio.gather(
        *(sender(host, port, c, per_connection, run, latencies) for c in range(connections))
    )
    elapsed = time.perf_counter() - started
    total = connections * per_connection
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    print(
        f"{total} messages over {connections} connections in {elapsed:.2f} s: "
        f"{total / elapsed:,.0f} messages/s; ACK latency p50 {p(0.5):.1f} ms, "
        f"p99 {p(0.99):.1f} ms; not AA: {sum(failures)}"
    )
    sys.exit(1 if sum(failures) else 0)


asyncio.run(main())
