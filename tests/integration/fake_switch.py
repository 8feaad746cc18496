"""A stand-in for ``twinline switch``, used only to test the harness itself.

``python fake_switch.py switch --config FILE [--misbehave WHAT]`` reads the
UDP listen address from the configuration, answers OPTIONS with 200 and every
other request with 501, and exits 0 on SIGTERM. WHAT makes it misbehave the
ways the harness must notice: ``traceback`` (prints one to stderr before
exiting), ``exit3`` (exits with status 3 on SIGTERM), ``hang`` (ignores
SIGTERM), ``silent`` (never answers).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import tomllib


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["switch"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--misbehave", default="")
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    udp = next(a for a in config["switch"]["listen"] if a.startswith("udp:"))
    _, host, port = udp.split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, int(port)))
    sock.settimeout(0.05)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    if args.misbehave == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_term)
    print(f"fake switch listening on udp {host}:{port}", file=sys.stderr, flush=True)
    while not stopping:
        try:
            data, peer = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if args.misbehave == "silent":
            continue
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        keep = [
            line
            for line in lines[1:]
            if line.split(":", 1)[0].lower() in ("via", "from", "to", "call-id", "cseq")
        ]
        status = "200 OK" if method == "OPTIONS" else "501 Not Implemented"
        response = "\r\n".join([f"SIP/2.0 {status}", *keep, "Content-Length: 0", "", ""])
        sock.sendto(response.encode(), peer)
    if args.misbehave == "traceback":
        print("Traceback (most recent call last):\n  ValueError: on purpose", file=sys.stderr)
    return 3 if args.misbehave == "exit3" else 0


if __name__ == "__main__":
    sys.exit(main())
