"""Ports for the servers a system test starts on loopback.

A port the kernel hands out for bind(0) comes from the ephemeral range, so between the test
picking it and its server binding it, any other socket (a relay's, a client's, another test's)
may be given the same port. Ports here come from below that range instead, and are checked free
for TCP and UDP on both loopback addresses.
"""
import random
import socket


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                with socket.socket(family, kind) as s:
                    s.bind((host, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                    continue
                return False
    return True


def free_port():
    """A TCP/UDP port on loopback that no socket holds and the kernel will not hand out."""
    high = _ephemeral_low()
    low = max(1024, min(10000, high - 2000))
    for _ in range(500):
        port = random.randrange(low, high)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {low}..{high - 1}")


free_udp_port = free_port
