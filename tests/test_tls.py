"""
Tests for L{bpctunnel.tls}: real TLS handshakes between our server and
client options, run in memory (TLSMemoryBIOFactory over iosim, no sockets).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLContextFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

from bpctunnel import pki, tls
from bpctunnel.errors import CertificateError


@implementer(IHandshakeListener)
class RecordingProtocol(Protocol):
    """Records handshake completion, the peer's certificate, data and the loss reason."""

    def __init__(self) -> None:
        self.handshake_done = False
        self.peer_der: bytes | None = None
        self.received = b""
        self.lost_reason = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.peer_der = tls.peer_certificate_der(self.transport)
        self.transport.write(b"hello from " + self.side)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost_reason = reason


def handshake(server_options, client_options):
    """Connect a server and a client in memory and run until nothing moves."""
    server, client = RecordingProtocol(), RecordingProtocol()
    server.side, client.side = b"server", b"client"
    clock = Clock()
    server_factory = TLSMemoryBIOFactory(
        server_options, False, Factory.forProtocol(lambda: server), clock)
    client_factory = TLSMemoryBIOFactory(
        client_options, True, Factory.forProtocol(lambda: client), clock)
    _, _, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
    )
    pump.flush()
    return server, client


def openssl_reasons(protocol: RecordingProtocol) -> list[str]:
    """The OpenSSL reason strings of the SSL.Error that ended the connection."""
    assert protocol.lost_reason is not None
    error = protocol.lost_reason.value
    assert isinstance(error, SSL.Error), repr(error)
    return [entry[2] for entry in error.args[0]]


def assert_server_refused(server: RecordingProtocol) -> None:
    """The server never completed the handshake and got no application data."""
    assert not server.handshake_done
    assert server.received == b""
    assert server.peer_der is None


@pytest.fixture(scope="module")
def ca() -> pki.CertAndKey:
    return pki.make_ca()


@pytest.fixture(scope="module")
def server_cert(ca) -> pki.CertAndKey:
    return pki.make_server_cert(ca, "tunnel.example")


@pytest.fixture(scope="module")
def client_cert(ca) -> pki.CertAndKey:
    return pki.make_client_cert(ca, "laptop1")


@pytest.fixture(scope="module")
def server_options(ca, server_cert):
    return tls.server_tls_options_from(ca.cert_pem, server_cert.cert_pem, server_cert.key_pem)


def client_options(ca, cert: pki.CertAndKey, host: str = "tunnel.example"):
    return tls.client_tls_options_from(host, ca.cert_pem, cert.cert_pem, cert.key_pem)


def test_good_client_connects(ca, server_cert, client_cert, server_options) -> None:
    """Our CA's client meets our server: data flows and each side sees the other's cert."""
    assert IOpenSSLContextFactory.providedBy(server_options)
    server, client = handshake(server_options, client_options(ca, client_cert))
    assert (server.handshake_done, client.handshake_done) == (True, True)
    assert (server.received, client.received) == (b"hello from client", b"hello from server")
    assert server.lost_reason is None and client.lost_reason is None
    assert pki.fingerprint_sha256(server.peer_der) == pki.fingerprint_sha256(client_cert.cert_pem)
    assert pki.common_name(server.peer_der) == "laptop1"
    assert pki.fingerprint_sha256(client.peer_der) == pki.fingerprint_sha256(server_cert.cert_pem)


def test_client_from_other_ca_refused(ca, server_options) -> None:
    """
    A client cert from another CA fails the handshake.  Under TLS 1.3 the
    client has already finished its side, so it learns this from the alert.
    """
    stranger = pki.make_client_cert(pki.make_ca("other CA"), "laptop1")
    server, client = handshake(server_options, client_options(ca, stranger))
    assert_server_refused(server)
    assert openssl_reasons(server) == ["certificate verify failed"]
    assert client.handshake_done
    assert openssl_reasons(client) == ["tlsv1 alert unknown ca"]


def test_client_without_cert_refused(ca, server_options) -> None:
    """A client presenting no certificate is refused ('certificate required' alert)."""
    anonymous = optionsForClientTLS(
        "tunnel.example", trustRoot=Certificate.loadPEM(ca.cert_pem),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3})
    server, client = handshake(server_options, anonymous)
    assert_server_refused(server)
    assert openssl_reasons(server) == ["peer did not return a certificate"]
    assert openssl_reasons(client) == ["tlsv13 alert certificate required"]


def test_server_cert_as_client_cert_refused(ca, server_cert, server_options) -> None:
    """A CA-signed cert without clientAuth (here the server's own) is refused."""
    server, client = handshake(server_options, client_options(ca, server_cert))
    assert_server_refused(server)
    assert openssl_reasons(server) == ["certificate verify failed"]
    assert openssl_reasons(client) == ["tls alert unsupported certificate"]


def test_wrong_server_name_refused_by_client(ca, client_cert, server_options) -> None:
    """A server cert for another name fails service-identity checks on the client."""
    server, client = handshake(server_options, client_options(ca, client_cert, "other.example"))
    assert not client.handshake_done and client.received == b""
    assert isinstance(client.lost_reason.value, VerificationError)
    assert "other.example" in str(client.lost_reason.value)
    assert isinstance(server.lost_reason.value, ConnectionLost)
    assert_server_refused(server)


def test_server_from_other_ca_refused_by_client(ca, client_cert) -> None:
    """A server whose cert our CA did not sign fails the client's verification."""
    other = pki.make_ca("other CA")
    impostor = pki.make_server_cert(other, "tunnel.example")
    options = tls.server_tls_options_from(ca.cert_pem, impostor.cert_pem, impostor.key_pem)
    server, client = handshake(options, client_options(ca, client_cert))
    assert not client.handshake_done
    assert openssl_reasons(client) == ["certificate verify failed"]
    assert openssl_reasons(server) == ["tlsv1 alert unknown ca"]


def test_tls12_client_refused(ca, client_cert, server_options) -> None:
    """A client limited to TLS 1.2 cannot connect: the server requires TLS 1.3."""
    old = optionsForClientTLS(
        "tunnel.example", trustRoot=Certificate.loadPEM(ca.cert_pem),
        extraCertificateOptions={
            "lowerMaximumSecurityTo": TLSVersion.TLSv1_2,
            "certificate": x509.load_pem_x509_certificate(client_cert.cert_pem),
            "privateKey": serialization.load_pem_private_key(client_cert.key_pem, None),
        })
    server, client = handshake(server_options, old)
    assert_server_refused(server)
    assert openssl_reasons(server) == ["unsupported protocol"]
    assert openssl_reasons(client) == ["tlsv1 alert protocol version"]


def test_tls12_server_refused(ca, server_cert, client_cert) -> None:
    """Our client offers only TLS 1.3, so a server limited to TLS 1.2 cannot answer."""
    old = CertificateOptions(
        certificate=x509.load_pem_x509_certificate(server_cert.cert_pem),
        privateKey=serialization.load_pem_private_key(server_cert.key_pem, None),
        lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
    server, client = handshake(old, client_options(ca, client_cert))
    assert not client.handshake_done and not server.handshake_done
    assert openssl_reasons(server) == ["unsupported protocol"]
    assert openssl_reasons(client) == ["tlsv1 alert protocol version"]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_ip_address_server(ca, client_cert, address: str) -> None:
    """A client connecting by IP address accepts a cert with that IP SAN only."""
    cert = pki.make_server_cert(ca, address)
    options = tls.server_tls_options_from(ca.cert_pem, cert.cert_pem, cert.key_pem)
    server, client = handshake(options, client_options(ca, client_cert, address))
    assert (server.received, client.received) == (b"hello from client", b"hello from server")
    other = "127.0.0.2" if address == "127.0.0.1" else "::2"
    server, client = handshake(options, client_options(ca, client_cert, other))
    assert isinstance(client.lost_reason.value, VerificationError)
    assert server.received == b""


def write_certs(directory: Path, ca, server_cert) -> None:
    pki.write_public(directory / "ca.crt", ca.cert_pem)
    pki.write_public(directory / "server.crt", server_cert.cert_pem)
    pki.write_private(directory / "server.key", server_cert.key_pem)


def test_options_from_files(tmp_path, ca, server_cert, client_cert) -> None:
    """Options read from the certs directory and client files give a working link."""
    write_certs(tmp_path, ca, server_cert)
    pki.write_public(tmp_path / "laptop1.crt", client_cert.cert_pem)
    pki.write_private(tmp_path / "laptop1.key", client_cert.key_pem)
    server_options = tls.server_tls_options(tmp_path)
    client = tls.client_tls_options(
        "tunnel.example", tmp_path / "ca.crt", tmp_path / "laptop1.crt", tmp_path / "laptop1.key")
    server, _ = handshake(server_options, client)
    assert server.received == b"hello from client"
    assert pki.common_name(server.peer_der) == "laptop1"


@pytest.mark.parametrize("name, content, message", [
    ("ca.crt", None, "{dir}/ca.crt does not exist; "),
    ("ca.crt", "dir", "cannot read {dir}/ca.crt: Is a directory; "),
    ("ca.crt", b"", "{dir}/ca.crt is not a PEM certificate "),
    ("server.crt", b"garbage\n", "{dir}/server.crt is not a PEM certificate "),
    ("server.crt", None, "{dir}/server.crt does not exist; "),
    ("server.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
     "{dir}/server.key is not a PEM private key "),
    ("server.key", "other key", "{dir}/server.key does not belong to {dir}/server.crt; "),
])
def test_server_options_file_errors(tmp_path, ca, server_cert, name, content, message) -> None:
    """Each broken file in the certs directory is named in the CertificateError."""
    write_certs(tmp_path, ca, server_cert)
    path = tmp_path / name
    path.unlink()
    if content == "dir":
        path.mkdir()
    elif content == "other key":
        path.write_bytes(pki.make_server_cert(ca, "tunnel.example").key_pem)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CertificateError) as info:
        tls.server_tls_options(tmp_path)
    assert str(info.value).startswith(message.format(dir=tmp_path)), str(info.value)


def test_client_options_file_errors(tmp_path, ca, client_cert) -> None:
    """Client option errors name the missing file or the mismatched pair."""
    pki.write_public(tmp_path / "ca.crt", ca.cert_pem)
    pki.write_public(tmp_path / "me.crt", client_cert.cert_pem)
    pki.write_private(tmp_path / "me.key", pki.make_client_cert(ca, "laptop1").key_pem)
    with pytest.raises(CertificateError, match="nope.crt does not exist"):
        tls.client_tls_options("tunnel.example", tmp_path / "nope.crt",
                               tmp_path / "me.crt", tmp_path / "me.key")
    with pytest.raises(CertificateError) as info:
        tls.client_tls_options("tunnel.example", tmp_path / "ca.crt",
                               tmp_path / "me.crt", tmp_path / "me.key")
    assert str(info.value).startswith(f"{tmp_path}/me.key does not belong to {tmp_path}/me.crt")


class FakeTLS:
    """Stands in for a TLS transport whose peer sent no certificate."""

    def getPeerCertificate(self):
        return None


class Wrapper:
    def __init__(self, transport) -> None:
        self.transport = transport


def test_peer_certificate_der_edge_cases() -> None:
    """Non-TLS transports and certificate-less peers give None, through wrappers too."""
    assert tls.peer_certificate_der(StringTransport()) is None
    assert tls.peer_certificate_der(Wrapper(Wrapper(StringTransport()))) is None
    assert tls.peer_certificate_der(Wrapper(FakeTLS())) is None
    looped = Wrapper(None)
    looped.transport = looped
    assert tls.peer_certificate_der(looped) is None


def test_peer_certificate_der_through_wrapper(ca, client_cert, server_options) -> None:
    """An object whose .transport is the TLS protocol (like a WebSocket) finds the cert."""
    server, _ = handshake(server_options, client_options(ca, client_cert))
    der = tls.peer_certificate_der(Wrapper(server))
    assert der == x509.load_pem_x509_certificate(client_cert.cert_pem).public_bytes(
        serialization.Encoding.DER)
