"""A Modbus device whose registers are whatever the test says: the peer for the meter-model
tests, on Debian's pymodbus 3.0. Run with /usr/bin/python3.

The test encodes every register itself, from the maker's published map, with Python's
struct (see test/drivers-meters.test.ts): no Outpost model file is read here.

  --layout JSON    {"units": {"<unit>": {"hr": [ENTRY, ...], "ir": [ENTRY, ...]}}}
                   hr: holding registers (FC03), ir: input registers (FC04). ENTRY is
                     [address, "words", [w, ...]]          raw 16-bit words
                     [address, FORMAT, value]              struct.pack(FORMAT, value), split
                                                           into 16-bit words in byte order
                                                           (">f", ">I", ">Q", ">i", ">H", ...)
                     [address, FORMAT, value, "lowfirst"]  the same, words reversed
                                                           (low word first)
                     [address, "text", "B23 "]             ASCII, two characters per register
                   Entries apply in order (a later one overwrites). Only the addresses
                   given exist: a read that touches any other one gets exception 2
                   (illegal data address), as on a real meter.
  --tcp PORT       serve Modbus TCP on 127.0.0.1:PORT (0 = pick a free one)
  --rtu PATH       serve Modbus RTU on a serial path (one end of a socat pty pair)
  --baud B         RTU baud rate (default 9600)
  --parity P       RTU parity N, E or O (default N)

Prints "READY <port-or-path>" once it serves. Control, one JSON command per line on stdin,
one JSON reply per line on stdout:
  {"cmd":"set","unit":1,"table":"hr","entry":[20480,"words",[65535,65535,65535,65535]]}
  {"cmd":"silence","unit":1,"on":true}   the unit stops answering (false: it answers again)
Closing stdin ends the process.
"""
import argparse
import asyncio
import json
import logging
import os
import struct
import sys
import threading

from pymodbus.datastore import ModbusServerContext, ModbusSlaveContext, ModbusSparseDataBlock
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
from pymodbus_serve import serve  # noqa: E402

logging.basicConfig(level=logging.CRITICAL)

TABLE_FC = {"hr": 3, "ir": 4}


def encode(entry):
    """One layout entry as (address, [16-bit words])."""
    address, fmt, value = entry[0], entry[1], entry[2]
    if fmt == "words":
        return address, [int(w) & 0xFFFF for w in value]
    if fmt == "text":
        raw = value.encode("ascii")
        raw += b"\0" * (len(raw) % 2)
    else:
        raw = struct.pack(fmt, value)
    words = list(struct.unpack(">%dH" % (len(raw) // 2), raw))
    if len(entry) > 3 and entry[3] == "lowfirst":
        words.reverse()
    return address, words


def block(entries):
    values = {}
    for entry in entries:
        address, words = encode(entry)
        for i, w in enumerate(words):
            values[address + i] = w
    # An empty table still needs one address; 65535 is never read by these tests.
    return ModbusSparseDataBlock(values or {65535: 0})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layout", required=True)
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--rtu")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--parity", default="N", choices=["N", "E", "O"])
    args = ap.parse_args()
    layout = json.loads(args.layout)
    slaves = {}
    for unit, tables in layout["units"].items():
        slaves[int(unit)] = ModbusSlaveContext(
            di=ModbusSparseDataBlock({65535: 0}),
            co=ModbusSparseDataBlock({65535: 0}),
            hr=block(tables.get("hr", [])),
            ir=block(tables.get("ir", [])),
            zero_mode=True,
        )
    context = ModbusServerContext(slaves=slaves, single=False)
    silent = set()

    def handle(line):
        reply = {}
        try:
            c = json.loads(line)
            cmd = c.get("cmd")
            if cmd == "set":
                unit = int(c["unit"])
                if unit not in slaves or c["table"] not in TABLE_FC:
                    raise ValueError("no unit %s or table %s" % (unit, c["table"]))
                address, words = encode(c["entry"])
                context[unit].setValues(TABLE_FC[c["table"]], address, words)
            elif cmd == "silence":
                (silent.add if c.get("on", True) else silent.discard)(int(c["unit"]))
            else:
                raise ValueError("unknown command %r" % cmd)
            reply["ok"] = True
        except Exception as e:  # a bad command changes nothing and says why
            reply = {"ok": False, "error": str(e)}
        print(json.dumps(reply), flush=True)

    def manipulate(response):
        if response.unit_id in silent:
            return b"", True
        return response, False

    async def run():
        loop = asyncio.get_running_loop()

        def control():
            for line in sys.stdin:
                if line.strip():
                    loop.call_soon_threadsafe(handle, line)
            os._exit(0)  # stdin closed: the test is gone, so are we

        threading.Thread(target=control, daemon=True).start()
        await serve(context, manipulate, tcp=args.tcp, rtu=args.rtu, baud=args.baud, parity=args.parity)

    asyncio.run(run())


if __name__ == "__main__":
    main()
