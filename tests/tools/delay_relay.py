#!/usr/bin/env python3
"""A UDP relay that adds a one-way delay (with jitter) in both directions, to give loopback PoPs
realistic distances in the demo. Each relay is LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT:RTT_MS;
half the RTT is added each way, +- jitter_ms/2 uniformly. Runs until SIGTERM.

    delay_relay.py [--jitter-ms J] 40001:127.0.0.1:8701:8 40002:127.0.0.1:8702:160 ...
"""
import argparse
import asyncio
import random
import signal


class Relay:
    def __init__(self, loop, listen_port, upstream, rtt_ms, jitter_ms):
        self.loop = loop
        self.upstream = upstream
        self.one_way = rtt_ms / 2000.0
        self.jitter = jitter_ms / 2000.0
        self.client = None
        self.front = None
        self.back = None
        self.listen_port = listen_port

    def delay(self):
        return max(0.0, self.one_way + random.uniform(-self.jitter, self.jitter))

    async def start(self):
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.client = addr
                relay.loop.call_later(relay.delay(), relay.back.sendto, data)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if relay.client is not None:
                    relay.loop.call_later(relay.delay(), relay.front.sendto, data, relay.client)

        self.front, _ = await self.loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", self.listen_port))
        self.back, _ = await self.loop.create_datagram_endpoint(Back, remote_addr=self.upstream)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jitter-ms", type=float, default=0.5)
    parser.add_argument("relays", nargs="+")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    for spec in args.relays:
        listen, host, port, rtt = spec.split(":")
        await Relay(loop, int(listen), (host, int(port)), float(rtt), args.jitter_ms).start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("relays ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
