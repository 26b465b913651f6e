#!/usr/bin/env python3
"""A UDP relay that adds a one-way delay (with jitter) in both directions, to give loopback PoPs
realistic distances in the demo. Each relay is LISTEN_PORT:UPSTREAM_HOST:UPSTREAM_PORT:RTT_MS;
half the RTT is added each way, +- jitter_ms/2 uniformly. Runs until SIGTERM.

Each client address (an agent's source port: one per ECMP path) gets its own upstream socket, so
replies go back to the port they came from and the upstream tells the clients apart, as a NAT
would. --drop-source-port P drops everything from client port P (either direction: its probes
never reach the reflector); --drop-nth-source N drops the N-th client port the relay sees (1 is
the first), for clients whose ports are ephemeral; the relay prints "dropping source port P" when
it picks one.

    delay_relay.py [--jitter-ms J] [--drop-source-port P] [--drop-nth-source N] 40001:127.0.0.1:8701:8 ...
"""
import argparse
import asyncio
import random
import signal


class Relay:
    def __init__(self, loop, listen_port, upstream, rtt_ms, jitter_ms, drop_ports, drop_nth):
        self.loop = loop
        self.upstream = upstream
        self.one_way = rtt_ms / 2000.0
        self.jitter = jitter_ms / 2000.0
        self.front = None
        self.backs = {}  # client address -> its upstream transport (None while it opens)
        self.pending = {}  # client address -> datagrams waiting for that transport
        self.listen_port = listen_port
        self.drop_ports = drop_ports
        self.drop_nth = drop_nth
        self.seen_ports = []

    def delay(self):
        return max(0.0, self.one_way + random.uniform(-self.jitter, self.jitter))

    def dropped(self, client):
        port = client[1]
        if port not in self.seen_ports:
            self.seen_ports.append(port)
            if len(self.seen_ports) == self.drop_nth:
                self.drop_ports.add(port)
                print(f"dropping source port {port}", flush=True)
        return port in self.drop_ports

    async def open_back(self, client):
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.loop.call_later(relay.delay(), relay.front.sendto, data, client)

        back, _ = await self.loop.create_datagram_endpoint(Back, remote_addr=self.upstream)
        self.backs[client] = back
        for data in self.pending.pop(client, []):
            self.loop.call_later(self.delay(), back.sendto, data)

    def forward(self, data, client):
        if self.dropped(client):
            return
        back = self.backs.get(client)
        if back is not None:
            self.loop.call_later(self.delay(), back.sendto, data)
        elif client in self.pending:
            self.pending[client].append(data)
        else:
            self.pending[client] = [data]
            self.loop.create_task(self.open_back(client))

    async def start(self):
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay.forward(data, addr)

        self.front, _ = await self.loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", self.listen_port))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jitter-ms", type=float, default=0.5)
    parser.add_argument("--drop-source-port", type=int, action="append", default=[])
    parser.add_argument("--drop-nth-source", type=int, default=0)
    parser.add_argument("relays", nargs="+")
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    for spec in args.relays:
        listen, host, port, rtt = spec.split(":")
        await Relay(loop, int(listen), (host, int(port)), float(rtt), args.jitter_ms, set(args.drop_source_port),
                    args.drop_nth_source).start()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print("relays ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
