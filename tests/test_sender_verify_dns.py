"""The real resolver wrapper against a fake DNS server on 127.0.0.1 (UDP, any free port)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from mail2sms.sender_verify import DnsError, DnsResolver

ZONE = {
    ("example.com.", "TXT"): ['"v=spf1 " "ip4:192.0.2.0/24 -all"'],
    ("example.com.", "MX"): ["10 mx.example.com."],
    ("example.com.", "A"): ["192.0.2.1"],
}


class FakeDns:
    """Answers from ZONE; ``broken.example.com`` gets SERVFAIL, ``silent.example.com`` nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.05)  # so the loop sees ``stop`` (close() does not wake it)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
            if name.startswith("silent."):
                continue
            response = dns.message.make_response(query)
            if name.startswith("broken."):
                response.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in ZONE:
                response.answer.append(
                    dns.rrset.from_text_list(name, 60, "IN", rdtype, ZONE[(name, rdtype)])
                )
            elif not any(n == name for n, _ in ZONE):
                response.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(response.to_wire(), peer)


@pytest.fixture
def resolver() -> Iterator[DnsResolver]:
    server = FakeDns()
    server.thread.start()
    resolver = DnsResolver(["127.0.0.1"])
    resolver._get().port = server.port
    yield resolver
    server.stop.set()
    server.thread.join(5)
    server.sock.close()


def test_records_come_back_in_the_resolver_protocols_shape(resolver):
    assert resolver.lookup("example.com", "TXT", 2) == ["v=spf1 ip4:192.0.2.0/24 -all"]
    assert resolver.lookup("example.com", "MX", 2) == ["10 mx.example.com"]
    assert resolver.lookup("example.com", "A", 2) == ["192.0.2.1"]


def test_no_such_name_or_record_is_an_empty_answer(resolver):
    assert resolver.lookup("nothing.example.com", "TXT", 2) == []
    assert resolver.lookup("example.com", "AAAA", 2) == []
    assert resolver.lookup("bad..name", "TXT", 2) == []


def test_servfail_and_timeout_are_dns_errors_not_empty_answers(resolver):
    with pytest.raises(DnsError, match=r"broken\.example\.com"):
        resolver.lookup("broken.example.com", "TXT", 2)
    with pytest.raises(DnsError, match=r"silent\.example\.com"):
        resolver.lookup("silent.example.com", "TXT", 0.3)
