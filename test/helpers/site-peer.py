"""An independent site for the end-to-end tests, on Debian's pymodbus 3.0.

Run with /usr/bin/python3 (the only interpreter here that has pymodbus).

  --outlets N        SDM120 meters at units 1..N, a relay board at unit 100 with coils 0..N-1
  --tcp PORT         serve Modbus TCP on 127.0.0.1:PORT (0 = pick a free one)
  --rtu PATH         serve Modbus RTU on a serial path (one end of a socat pty pair)
  --baud B           RTU baud rate (default 9600)
  --energy-kwh E     every meter's register at start (default 100 + n)
  --volts V          mains voltage (default 230)
  --feeder UNIT      an SDM630 feeder meter at UNIT measuring the circuit all outlets are on:
                     per phase, the sum of what its outlets draw plus an unmanaged load
  --phases P         the phase of each outlet, comma separated (1,1,2,...; default all 1)
  --wiring W         which socket each coil really switches, C:M pairs comma separated (1:2,2:1
                     swaps outlets 1 and 2's contactors; 3:0 wires coil 3 to nothing, a dead
                     relay); coils not named switch their own socket
  --reversed N,...   meters whose current sensor is wired the wrong way round: their power
                     reads negative and their import register does not count

Prints "READY <port-or-path>" on stdout once it serves.

The meters and the relay board are PHYSICALLY COUPLED, as on a real site: meter n
shows current only while the coil wired to socket n (coil n-1 unless --wiring says
otherwise) is closed and a vehicle is plugged into outlet n;
its energy register integrates V*I*dt every tick (100 ms) and never goes down. No
Outpost code is involved: this is what the daemon's drivers must understand.

Registers (SDM120 layout, float32 big-endian, input registers, FC04):
  0x0000 voltage V, 0x0006 current A, 0x000C active power W, 0x0046 frequency Hz,
  0x0048 import active energy kWh, 0x0156 total active energy kWh.

Control: one command per line on stdin, JSON or plain words; one JSON reply per line
on stdout, echoing "id" when the command had one:
  {"cmd":"plug","outlet":1,"amps":16}     plug 1 16      a vehicle that draws 16 A
  {"cmd":"amps","outlet":1,"amps":3}      amps 1 3       the vehicle tapers (0 = full)
  {"cmd":"unplug","outlet":1}             unplug 1
  {"cmd":"silence","unit":1}              silence 1      unit stops answering (1..N or 100)
  {"cmd":"answer","unit":1}               answer 1       it answers again
  {"cmd":"coil","outlet":1,"closed":true} coil 1 1       another master writes the coil
  {"cmd":"delay","ms":150}                delay 150      every reply is held back 150 ms
  {"cmd":"load","amps":30,"phase":1}      load 30 1      an unmanaged load on the feeder (a heater)
  {"cmd":"reset-max"}                     reset-max      forget the maxima below
  {"cmd":"wire","coil":3,"socket":3}      wire 3 3       the electrician rewires coil 3 to socket 3 (0: to nothing)
  {"cmd":"reverse","outlet":6,"reversed":false}
                                          reverse 6 0    meter 6's current sensor turned round
  {"cmd":"glitch","outlet":1,"addKwh":5000} glitch 1 5000
                                          the next reply that carries meter n's import register
                                          shows it addKwh too high (a corrupt frame), the
                                          replies after it are right again
  {"cmd":"state"}                         state
state answers {"ok":true,"outlets":[{"outlet","coil","plugged","amps","drawA","energyWh","polls","glitched"}]}
where energyWh is what the meter's import register shows (float32 kWh x 1000), polls
counts the requests meter n has answered and glitched the glitched replies it sent. With --feeder every reply also carries
"feeder": {"unit","currentsA" [L1,L2,L3],"loadA","polls","maxA" [per phase],"maxDrawing",
"loadAtPolls","clearAtPolls"}: the highest phase currents and the most outlets drawing at once
seen at any tick (every 100 ms) or change since the start or the last reset-max, and the
feeder meter's poll count when the last unmanaged load was switched on and when, at a tick
after it, no outlet was drawing any more (null until then): the shedding as the site saw it.
Closing stdin ends the process (the test is gone).
"""
import argparse
import asyncio
import json
import logging
import os
import struct
import sys
import threading
import time

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'fixtures'))
from pymodbus_serve import serve  # noqa: E402

logging.basicConfig(level=logging.CRITICAL)

TICK_S = 0.1
RELAY_UNIT = 100


def words(v):
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def f32(v):
    return struct.unpack(">f", struct.pack(">f", v))[0]


class Outlet:
    def __init__(self, n, kwh):
        self.n = n
        self.kwh = kwh  # exact integral, kept as a double; the register shows it as float32
        self.plugged = False
        self.amps = 0.0
        self.glitch_kwh = 0.0  # pending: the next reply carrying the import register is this much too high
        self.glitched = 0  # glitched replies sent

    def draw(self, coil):
        return self.amps if (coil and self.plugged and self.amps > 0) else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--outlets", type=int, default=2)
    ap.add_argument("--tcp", type=int)
    ap.add_argument("--rtu")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--energy-kwh", type=float)
    ap.add_argument("--volts", type=float, default=230.0)
    ap.add_argument("--feeder", type=int)
    ap.add_argument("--phases")
    ap.add_argument("--wiring")
    ap.add_argument("--reversed")
    args = ap.parse_args()
    n_out = args.outlets
    phases = [int(x) for x in args.phases.split(",")] if args.phases else []
    phase_of = {n: (phases[n - 1] if n - 1 < len(phases) else 1) for n in range(1, n_out + 1)}
    feeds = {n: n for n in range(1, n_out + 1)}  # coil of outlet c -> the socket it switches (0: none)
    for pair in (args.wiring.split(",") if args.wiring else []):
        c, m = (int(x) for x in pair.split(":"))
        feeds[c] = m
    reversed_meters = {int(x) for x in args.reversed.split(",")} if args.reversed else set()

    def meter_slave():
        return ModbusSlaveContext(
            di=ModbusSequentialDataBlock(0, [0] * 8),
            co=ModbusSequentialDataBlock(0, [0] * 8),
            hr=ModbusSequentialDataBlock(0, [0] * 8),
            ir=ModbusSequentialDataBlock(0, [0] * 0x200),
            zero_mode=True,
        )

    slaves = {n: meter_slave() for n in range(1, n_out + 1)}
    if args.feeder:
        slaves[args.feeder] = meter_slave()
    feeder = {"load": [0.0, 0.0, 0.0], "kwh": 1000.0, "maxA": [0.0, 0.0, 0.0], "maxDrawing": 0, "loadAtPolls": None, "clearAtPolls": None}
    slaves[RELAY_UNIT] = ModbusSlaveContext(
        di=ModbusSequentialDataBlock(0, [0] * 16),
        co=ModbusSequentialDataBlock(0, [False] * max(16, n_out)),
        hr=ModbusSequentialDataBlock(0, [0] * 16),
        ir=ModbusSequentialDataBlock(0, [0] * 16),
        zero_mode=True,
    )
    context = ModbusServerContext(slaves=slaves, single=False)
    outlets = {n: Outlet(n, args.energy_kwh if args.energy_kwh is not None else 100.0 + n) for n in range(1, n_out + 1)}
    silent = set()
    answered = {}  # unit -> requests answered (tests wait for "the daemon polled n more times")
    delay = [0.0]  # seconds every reply is held back (a slow bus: a read is nearly always in flight)

    def coil(n):
        return bool(context[RELAY_UNIT].getValues(1, n - 1, 1)[0])

    def powered(n):
        """Whether socket n has mains: a closed coil wired to it."""
        return any(coil(c) for c, m in feeds.items() if m == n)

    def publish(o):
        """Write outlet o's meter registers. Runs on the event loop, so a poll never sees half a float."""
        a = o.draw(powered(o.n))
        v = args.volts
        ir = context[o.n]
        ir.setValues(4, 0x0000, words(v))
        ir.setValues(4, 0x0006, words(a))
        ir.setValues(4, 0x000C, words(-v * a if o.n in reversed_meters else v * a))
        ir.setValues(4, 0x0046, words(50.0))
        ir.setValues(4, 0x0048, words(o.kwh + o.glitch_kwh))
        ir.setValues(4, 0x0156, words(o.kwh + o.glitch_kwh))

    def phase_currents():
        a = list(feeder["load"])
        for o in outlets.values():
            a[phase_of[o.n] - 1] += o.draw(powered(o.n))
        return a

    def publish_feeder(dt):
        """The feeder meter (SDM630 layout) sees the physical sum of its outlets, phase by phase."""
        if not args.feeder:
            return
        a = phase_currents()
        drawing = sum(1 for o in outlets.values() if o.draw(powered(o.n)) > 0)
        feeder["maxA"] = [max(m, x) for m, x in zip(feeder["maxA"], a)]
        feeder["maxDrawing"] = max(feeder["maxDrawing"], drawing)
        if feeder["loadAtPolls"] is not None and feeder["clearAtPolls"] is None and drawing == 0:
            feeder["clearAtPolls"] = answered.get(args.feeder, 0)
        v = args.volts
        feeder["kwh"] += v * sum(a) * dt / 3600.0 / 1000.0
        ir = context[args.feeder]
        for i, addr in enumerate((0x0000, 0x0002, 0x0004)):
            ir.setValues(4, addr, words(v))
        for i, addr in enumerate((0x0006, 0x0008, 0x000A)):
            ir.setValues(4, addr, words(a[i]))
        ir.setValues(4, 0x0034, words(v * sum(a)))
        ir.setValues(4, 0x0046, words(50.0))
        ir.setValues(4, 0x0048, words(feeder["kwh"]))

    def feeder_state():
        return {
            "unit": args.feeder,
            "currentsA": phase_currents(),
            "loadA": list(feeder["load"]),
            "polls": answered.get(args.feeder, 0),
            "maxA": list(feeder["maxA"]),
            "maxDrawing": feeder["maxDrawing"],
            "loadAtPolls": feeder["loadAtPolls"],
            "clearAtPolls": feeder["clearAtPolls"],
        }

    last = [time.monotonic()]

    def tick():
        t = time.monotonic()
        dt = t - last[0]
        last[0] = t
        for o in outlets.values():
            a = o.draw(powered(o.n))
            if a > 0 and o.n not in reversed_meters:
                o.kwh += args.volts * a * dt / 3600.0 / 1000.0
            publish(o)
        publish_feeder(dt)

    def state():
        return [
            {
                "outlet": o.n,
                "coil": coil(o.n),
                "plugged": o.plugged,
                "amps": o.amps,
                "drawA": o.draw(powered(o.n)),
                "energyWh": f32(o.kwh) * 1000.0,
                "polls": answered.get(o.n, 0),
                "glitched": o.glitched,
            }
            for o in outlets.values()
        ]

    def parse(line):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
        parts = line.split()
        if not parts:
            return None
        cmd = parts[0]
        if cmd in ("plug", "amps"):
            return {"cmd": cmd, "outlet": int(parts[1]), "amps": float(parts[2]) if len(parts) > 2 else 16.0}
        if cmd == "unplug":
            return {"cmd": cmd, "outlet": int(parts[1])}
        if cmd in ("silence", "answer"):
            return {"cmd": cmd, "unit": int(parts[1])}
        if cmd == "coil":
            return {"cmd": cmd, "outlet": int(parts[1]), "closed": parts[2] in ("1", "true", "on")}
        if cmd == "delay":
            return {"cmd": cmd, "ms": float(parts[1])}
        if cmd == "glitch":
            return {"cmd": cmd, "outlet": int(parts[1]), "addKwh": float(parts[2]) if len(parts) > 2 else 5000.0}
        if cmd == "load":
            return {"cmd": cmd, "amps": float(parts[1]), "phase": int(parts[2]) if len(parts) > 2 else 1}
        if cmd == "wire":
            return {"cmd": cmd, "coil": int(parts[1]), "socket": int(parts[2])}
        if cmd == "reverse":
            return {"cmd": cmd, "outlet": int(parts[1]), "reversed": parts[2] in ("1", "true", "on")}
        return {"cmd": cmd}

    def handle(line):
        reply = {}
        try:
            c = parse(line)
            if c is None:
                return
            if "id" in c:
                reply["id"] = c["id"]
            cmd = c.get("cmd")
            tick()  # bring energy up to this instant before changing anything
            if cmd in ("plug", "amps", "unplug", "coil"):
                o = outlets.get(int(c["outlet"]))
                if o is None:
                    raise ValueError("no outlet %s" % c["outlet"])
                if cmd == "plug":
                    o.plugged = True
                    o.amps = float(c.get("amps", 16.0))
                elif cmd == "amps":
                    o.amps = float(c["amps"])
                elif cmd == "unplug":
                    o.plugged = False
                else:
                    context[RELAY_UNIT].setValues(5, o.n - 1, [bool(c["closed"])])
                publish(o)
            elif cmd == "glitch":
                o = outlets.get(int(c["outlet"]))
                if o is None:
                    raise ValueError("no outlet %s" % c["outlet"])
                o.glitch_kwh = float(c.get("addKwh", 5000.0))
                publish(o)
            elif cmd in ("silence", "answer"):
                unit = int(c["unit"])
                if unit != RELAY_UNIT and unit not in outlets and unit != args.feeder:
                    raise ValueError("no unit %s" % unit)
                (silent.add if cmd == "silence" else silent.discard)(unit)
            elif cmd == "delay":
                delay[0] = max(0.0, float(c["ms"]) / 1000.0)
            elif cmd == "load":
                ph = int(c.get("phase", 1))
                if not args.feeder or ph not in (1, 2, 3):
                    raise ValueError("no feeder meter, or phase %s is not 1, 2 or 3" % ph)
                feeder["load"][ph - 1] = max(0.0, float(c["amps"]))
                on = sum(feeder["load"]) > 0
                feeder["loadAtPolls"] = answered.get(args.feeder, 0) if on else None
                feeder["clearAtPolls"] = None
                publish_feeder(0.0)
            elif cmd == "wire":
                c_, m_ = int(c["coil"]), int(c["socket"])
                if c_ not in outlets or (m_ != 0 and m_ not in outlets):
                    raise ValueError("no coil %s or socket %s" % (c_, m_))
                feeds[c_] = m_
                for o in outlets.values():
                    publish(o)
                publish_feeder(0.0)
            elif cmd == "reverse":
                o = outlets.get(int(c["outlet"]))
                if o is None:
                    raise ValueError("no outlet %s" % c["outlet"])
                (reversed_meters.add if c.get("reversed", True) else reversed_meters.discard)(o.n)
                publish(o)
            elif cmd == "reset-max":
                feeder["maxA"] = [0.0, 0.0, 0.0]
                feeder["maxDrawing"] = 0
                publish_feeder(0.0)
            elif cmd != "state":
                raise ValueError("unknown command %r" % cmd)
            reply.update({"ok": True, "outlets": state()})
            if args.feeder:
                reply["feeder"] = feeder_state()
        except Exception as e:  # a bad command changes nothing and says why
            reply.update({"ok": False, "error": str(e)})
        print(json.dumps(reply), flush=True)

    def manipulate(response):
        if response.unit_id in silent:
            return b"", True
        answered[response.unit_id] = answered.get(response.unit_id, 0) + 1
        o = outlets.get(response.unit_id)
        regs = list(getattr(response, "registers", None) or [])
        # Served from the registers as last published (ticks run on this same loop): the reply
        # carries the glitch when a float at an even offset is exactly the glitched register.
        glitched = words(o.kwh + o.glitch_kwh) if o is not None and o.glitch_kwh else None
        if glitched and any(regs[i:i + 2] == glitched for i in range(0, len(regs) - 1, 2)):
            # This reply carries the glitched import register: the next one is right again.
            o.glitched += 1
            o.glitch_kwh = 0.0
            publish(o)
        if delay[0] > 0:
            time.sleep(delay[0])  # blocks the server, as a slow device on a shared line does
        return response, False

    async def physics():
        while True:
            tick()
            await asyncio.sleep(TICK_S)

    async def run():
        loop = asyncio.get_running_loop()

        def control():
            for line in sys.stdin:
                loop.call_soon_threadsafe(handle, line)
            os._exit(0)  # stdin closed: the test is gone, so are we

        for o in outlets.values():
            publish(o)
        publish_feeder(0.0)
        asyncio.create_task(physics())
        threading.Thread(target=control, daemon=True).start()
        await serve(context, manipulate, tcp=args.tcp, rtu=args.rtu, baud=args.baud)

    asyncio.run(run())


if __name__ == "__main__":
    main()
