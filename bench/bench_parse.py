"""How long sipd's parse()+validate() takes against sipmessage 0.7.1.

A plain script, not a test: ``.venv/bin/python bench/bench_parse.py``.
It prints microseconds per message (best of several timeit repeats, so a
noisy machine inflates the figures less) for a typical REGISTER and a
typical INVITE with SDP. sipmessage is a test dependency (``make setup``
installs it); without it its column stays empty.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sipd.sip.message import parse  # noqa: E402

REGISTER = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1---7b3f6e8d9c1a2b4e\r\n"
    b"Max-Forwards: 70\r\n"
    b'Contact: <sip:jan@192.0.2.10:5060;transport=udp>;+sip.instance="<urn:uuid:'
    b'00000000-0000-1000-8000-000B82A1B2C3>";reg-id=1;expires=3600\r\n'
    b'To: "Jan" <sip:jan@example.com>\r\n'
    b'From: "Jan" <sip:jan@example.com>;tag=8a2f6c1e\r\n'
    b"Call-ID: 217edcfa-3c466a22-4ad1c3f0@192.0.2.10\r\n"
    b"CSeq: 65321 REGISTER\r\n"
    b"Expires: 3600\r\n"
    b'Authorization: Digest username="jan",realm="example.com",'
    b'nonce="5f8c3a7e1b2d4c6e8f0a1b2c3d4e5f60718293a4",uri="sip:example.com",'
    b'response="6629fae49393a05397450978507c4ef1",algorithm=MD5,cnonce="0a4f113b",'
    b"qop=auth,nc=00000001\r\n"
    b"User-Agent: Linksys/SPA3102-5.1.10(GW)\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REFER\r\n"
    b"Supported: replaces, outbound, path\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

_SDP = (
    b"v=0\r\n"
    b"o=jan 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1---a81c9e0f2b3d\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:jan@192.0.2.10:5060;transport=udp>\r\n"
    b"To: <sip:bob@example.com>\r\n"
    b'From: "Jan" <sip:jan@example.com>;tag=4f1e2d3c\r\n'
    b"Call-ID: 5d8e2f1a-9b7c-4e3d-a1f0-c2b3d4e5f6a7@192.0.2.10\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REFER, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b"User-Agent: baresip v3.10.1 (x86_64/linux)\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n"
    b"\r\n" + _SDP
)


def ours(data: bytes) -> Callable[[], object]:
    def run() -> object:
        msg = parse(data)
        msg.validate()
        return msg

    return run


def sipmessage_parse(data: bytes) -> Callable[[], object]:
    import sipmessage

    def run() -> object:
        msg = sipmessage.Message.parse(data)
        # sipmessage parses values lazily: reading them is part of the cost.
        return (msg.via, msg.contact, msg.from_address, msg.to_address, msg.cseq, msg.call_id)

    return run


def best_us(fn: Callable[[], object], number: int) -> float:
    fn()  # fail loudly here rather than inside timeit
    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("number", nargs="?", type=int, default=2000,
                    help="messages per timeit repeat (sipmessage gets a quarter)")
    number = ap.parse_args().number
    rows: list[tuple[str, float, float]] = []
    try:
        import sipmessage  # noqa: F401

        have_sipmessage = True
    except ImportError:
        have_sipmessage = False

    for name, data in (("REGISTER", REGISTER), ("INVITE+SDP", INVITE)):
        ours_us = best_us(ours(data), number)
        theirs_us = best_us(sipmessage_parse(data), number // 4) if have_sipmessage else float("nan")
        rows.append((name, ours_us, theirs_us))

    print(f"Python {sys.version.split()[0]}; microseconds per message, best of 7 timeit repeats")
    print("sipd: parse() + validate(), which parses and checks every field it reads")
    print("sipmessage: Message.parse() + reading via, contact, from, to, cseq, call_id")
    print()
    print(f"{'message':<12} {'sipd':>10} {'sipmessage':>12} {'sipmessage/sipd':>16}")
    for name, a, b in rows:
        print(f"{name:<12} {a:>8.1f}us {b:>10.1f}us {b / a:>15.1f}x")
    if not have_sipmessage:
        print("sipmessage is not installed: its column is empty")


if __name__ == "__main__":
    main()
