"""Publish a port of an emulated host on the machine's loopback (the prototype's 8000 -> 8001).

Usage: python -m mlfo_toolkit.net.relay --listen 127.0.0.1:8001 --pid HOST_PID --target 10.0.1.1:8000
The listening socket is made in the machine's namespace; the process then enters the host's
network namespace, so every upstream connection is made from inside the emulated network.

With --inward the other way round: the socket listens inside the host (e.g. 10.0.0.3:9302 in
Prometheus's host) and connections go to a target on the machine (Faucet's 127.0.0.1:9302).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading

from mlfo_toolkit.util.linux import enter_network_namespace, network_namespace_of


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
    _pump(client, upstream)
    client.close()
    upstream.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlfo_toolkit.net.relay", description=__doc__)
    parser.add_argument("--listen", required=True, type=_address)
    parser.add_argument("--pid", required=True, type=int)
    parser.add_argument("--target", required=True, type=_address)
    parser.add_argument("--inward", action="store_true", help="listen inside the host, connect on the machine")
    args = parser.parse_args(argv)
    if args.inward:
        with network_namespace_of(args.pid):
            listener = socket.create_server(args.listen, reuse_port=False)
    else:
        listener = socket.create_server(args.listen, reuse_port=False)
        enter_network_namespace(args.pid)  # before any thread exists: threads inherit it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"relay {args.listen[0]}:{args.listen[1]} -> {args.target[0]}:{args.target[1]}", flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, args.target), daemon=True).start()


if __name__ == "__main__":
    main()
