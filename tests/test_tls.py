"""
Tests for L{bpctunnel.transport.tls}: real TLS handshakes between our server and
client options, run in memory (TLSMemoryBIOFactory over iosim, no sockets).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bpctunnel import pki
from bpctunnel.transport import tls
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


# One CA, server cert, client cert and server options for the whole module
# (making keys is slow).

@functools.cache
def shared_ca() -> pki.CertAndKey:
    return pki.make_ca()


@functools.cache
def shared_server_cert() -> pki.CertAndKey:
    return pki.make_server_cert(shared_ca(), "tunnel.example")


@functools.cache
def shared_client_cert() -> pki.CertAndKey:
    return pki.make_client_cert(shared_ca(), "laptop1")


@functools.cache
def shared_server_options():
    ca, server_cert = shared_ca(), shared_server_cert()
    return tls.server_tls_options_from(ca.cert_pem, server_cert.cert_pem, server_cert.key_pem)


def client_options(ca, cert: pki.CertAndKey, host: str = "tunnel.example"):
    return tls.client_tls_options_from(host, ca.cert_pem, cert.cert_pem, cert.key_pem)


def write_certs(directory: Path, ca, server_cert) -> None:
    pki.write_public(directory / "ca.crt", ca.cert_pem)
    pki.write_public(directory / "server.crt", server_cert.cert_pem)
    pki.write_private(directory / "server.key", server_cert.key_pem)


@implementer(IOpenSSLClientConnectionCreator)
class OnlySuite:
    """A client (our CA's, with its certificate) that offers one TLS 1.3 cipher suite only."""

    def __init__(self, ca, cert: pki.CertAndKey, suite: bytes) -> None:
        options = CertificateOptions(
            privateKey=serialization.load_pem_private_key(cert.key_pem, None),
            certificate=x509.load_pem_x509_certificate(cert.cert_pem),
            verify=True, caCerts=[Certificate.loadPEM(ca.cert_pem).original],
            raiseMinimumTo=TLSVersion.TLSv1_3)
        self.context = options.getContext()
        self.context.set_tls13_ciphersuites(suite)

    def clientConnectionForTLS(self, tls_protocol):
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        connection.set_connect_state()
        return connection


class FakeTLS:
    """Stands in for a TLS transport whose peer sent no certificate."""

    def getPeerCertificate(self):
        return None


class Wrapper:
    def __init__(self, transport) -> None:
        self.transport = transport


class TLSTestCase(SynchronousTestCase):
    """The shared certificates and options, plus handshake assertions."""

    def setUp(self) -> None:
        self.ca = shared_ca()
        self.server_cert = shared_server_cert()
        self.client_cert = shared_client_cert()
        self.server_options = shared_server_options()

    def temp_dir(self) -> Path:
        """A new empty folder outside the current folder, removed after the test."""
        path = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def assertStartsWith(self, text: str, prefix: str, msg=None) -> None:
        self.assertTrue(text.startswith(prefix),
                        msg if msg is not None else f"{text!r} does not start with {prefix!r}")

    def openssl_reasons(self, protocol: RecordingProtocol) -> list[str]:
        """The OpenSSL reason strings of the SSL.Error that ended the connection."""
        self.assertIsNot(protocol.lost_reason, None)
        error = protocol.lost_reason.value
        self.assertIsInstance(error, SSL.Error, repr(error))
        return [entry[2] for entry in error.args[0]]

    def assertServerRefused(self, server: RecordingProtocol) -> None:
        """The server never completed the handshake and got no application data."""
        self.assertFalse(server.handshake_done)
        self.assertEqual(server.received, b"")
        self.assertIsNone(server.peer_der)


class HandshakeTests(TLSTestCase):
    """Who may connect to whom."""

    def test_good_client_connects(self) -> None:
        """Our CA's client meets our server: data flows and each side sees the other's cert."""
        self.assertTrue(IOpenSSLContextFactory.providedBy(self.server_options))
        server, client = handshake(self.server_options,
                                   client_options(self.ca, self.client_cert))
        self.assertEqual((server.handshake_done, client.handshake_done), (True, True))
        self.assertEqual((server.received, client.received),
                         (b"hello from client", b"hello from server"))
        self.assertIsNone(server.lost_reason)
        self.assertIsNone(client.lost_reason)
        self.assertEqual(pki.fingerprint_sha256(server.peer_der),
                         pki.fingerprint_sha256(self.client_cert.cert_pem))
        self.assertEqual(pki.common_name(server.peer_der), "laptop1")
        self.assertEqual(pki.fingerprint_sha256(client.peer_der),
                         pki.fingerprint_sha256(self.server_cert.cert_pem))

    def test_aes128_gcm_preferred(self) -> None:
        """The server picks AES-128-GCM, the cheapest of the suites a client offers."""
        server, client = handshake(self.server_options, client_options(self.ca, self.client_cert))
        self.assertEqual(server.transport._tlsConnection.get_cipher_name(),
                         "TLS_AES_128_GCM_SHA256")

    def test_client_with_one_other_suite_connects(self) -> None:
        """A client offering only AES-256-GCM still connects, with that suite."""
        server, client = handshake(self.server_options,
                                   OnlySuite(self.ca, self.client_cert, b"TLS_AES_256_GCM_SHA384"))
        self.assertEqual(client.received, b"hello from server")
        self.assertEqual(server.transport._tlsConnection.get_cipher_name(),
                         "TLS_AES_256_GCM_SHA384")

    def test_client_from_other_ca_refused(self) -> None:
        """
        A client cert from another CA fails the handshake.  Under TLS 1.3 the
        client has already finished its side, so it learns this from the alert.
        """
        stranger = pki.make_client_cert(pki.make_ca("other CA"), "laptop1")
        server, client = handshake(self.server_options, client_options(self.ca, stranger))
        self.assertServerRefused(server)
        self.assertEqual(self.openssl_reasons(server), ["certificate verify failed"])
        self.assertTrue(client.handshake_done)
        self.assertEqual(self.openssl_reasons(client), ["tlsv1 alert unknown ca"])

    def test_client_without_cert_refused(self) -> None:
        """A client presenting no certificate is refused ('certificate required' alert)."""
        anonymous = optionsForClientTLS(
            "tunnel.example", trustRoot=Certificate.loadPEM(self.ca.cert_pem),
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3})
        server, client = handshake(self.server_options, anonymous)
        self.assertServerRefused(server)
        self.assertEqual(self.openssl_reasons(server), ["peer did not return a certificate"])
        self.assertEqual(self.openssl_reasons(client), ["tlsv13 alert certificate required"])

    def test_server_cert_as_client_cert_refused(self) -> None:
        """A CA-signed cert without clientAuth (here the server's own) is refused."""
        server, client = handshake(self.server_options,
                                   client_options(self.ca, self.server_cert))
        self.assertServerRefused(server)
        self.assertEqual(self.openssl_reasons(server), ["certificate verify failed"])
        self.assertEqual(self.openssl_reasons(client), ["tls alert unsupported certificate"])

    def test_wrong_server_name_refused_by_client(self) -> None:
        """A server cert for another name fails service-identity checks on the client."""
        server, client = handshake(
            self.server_options, client_options(self.ca, self.client_cert, "other.example"))
        self.assertFalse(client.handshake_done)
        self.assertEqual(client.received, b"")
        self.assertIsInstance(client.lost_reason.value, VerificationError)
        self.assertIn("other.example", str(client.lost_reason.value))
        self.assertIsInstance(server.lost_reason.value, ConnectionLost)
        self.assertServerRefused(server)

    def test_server_from_other_ca_refused_by_client(self) -> None:
        """A server whose cert our CA did not sign fails the client's verification."""
        other = pki.make_ca("other CA")
        impostor = pki.make_server_cert(other, "tunnel.example")
        options = tls.server_tls_options_from(
            self.ca.cert_pem, impostor.cert_pem, impostor.key_pem)
        server, client = handshake(options, client_options(self.ca, self.client_cert))
        self.assertFalse(client.handshake_done)
        self.assertEqual(self.openssl_reasons(client), ["certificate verify failed"])
        self.assertEqual(self.openssl_reasons(server), ["tlsv1 alert unknown ca"])

    def test_tls12_client_refused(self) -> None:
        """A client limited to TLS 1.2 cannot connect: the server requires TLS 1.3."""
        old = optionsForClientTLS(
            "tunnel.example", trustRoot=Certificate.loadPEM(self.ca.cert_pem),
            extraCertificateOptions={
                "lowerMaximumSecurityTo": TLSVersion.TLSv1_2,
                "certificate": x509.load_pem_x509_certificate(self.client_cert.cert_pem),
                "privateKey": serialization.load_pem_private_key(
                    self.client_cert.key_pem, None),
            })
        server, client = handshake(self.server_options, old)
        self.assertServerRefused(server)
        self.assertEqual(self.openssl_reasons(server), ["unsupported protocol"])
        self.assertEqual(self.openssl_reasons(client), ["tlsv1 alert protocol version"])

    def test_tls12_server_refused(self) -> None:
        """Our client offers only TLS 1.3, so a server limited to TLS 1.2 cannot answer."""
        old = CertificateOptions(
            certificate=x509.load_pem_x509_certificate(self.server_cert.cert_pem),
            privateKey=serialization.load_pem_private_key(self.server_cert.key_pem, None),
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        server, client = handshake(old, client_options(self.ca, self.client_cert))
        self.assertFalse(client.handshake_done)
        self.assertFalse(server.handshake_done)
        self.assertEqual(self.openssl_reasons(server), ["unsupported protocol"])
        self.assertEqual(self.openssl_reasons(client), ["tlsv1 alert protocol version"])

    def check_ip_address_server(self, address: str) -> None:
        """A client connecting by IP address accepts a cert with that IP SAN only."""
        cert = pki.make_server_cert(self.ca, address)
        options = tls.server_tls_options_from(self.ca.cert_pem, cert.cert_pem, cert.key_pem)
        server, client = handshake(options, client_options(self.ca, self.client_cert, address))
        self.assertEqual((server.received, client.received),
                         (b"hello from client", b"hello from server"), address)
        other = "127.0.0.2" if address == "127.0.0.1" else "::2"
        server, client = handshake(options, client_options(self.ca, self.client_cert, other))
        self.assertIsInstance(client.lost_reason.value, VerificationError, (address, other))
        self.assertEqual(server.received, b"", (address, other))

    def test_ipv4_address_server(self) -> None:
        """A client connecting by IPv4 address accepts a cert with that IP SAN only."""
        self.check_ip_address_server("127.0.0.1")

    def test_ipv6_address_server(self) -> None:
        """A client connecting by IPv6 address accepts a cert with that IP SAN only."""
        self.check_ip_address_server("::1")


class OptionsFromFilesTests(TLSTestCase):
    """server_tls_options and client_tls_options read certs from files."""

    def test_options_from_files(self) -> None:
        """Options read from the certs directory and client files give a working link."""
        tmp_path = self.temp_dir()
        write_certs(tmp_path, self.ca, self.server_cert)
        pki.write_public(tmp_path / "laptop1.crt", self.client_cert.cert_pem)
        pki.write_private(tmp_path / "laptop1.key", self.client_cert.key_pem)
        server_options = tls.server_tls_options(tmp_path)
        client = tls.client_tls_options(
            "tunnel.example", tmp_path / "ca.crt", tmp_path / "laptop1.crt",
            tmp_path / "laptop1.key")
        server, _ = handshake(server_options, client)
        self.assertEqual(server.received, b"hello from client")
        self.assertEqual(pki.common_name(server.peer_der), "laptop1")

    def check_server_options_file_error(self, name: str, content, message: str) -> None:
        """Each broken file in the certs directory is named in the CertificateError."""
        tmp_path = self.temp_dir()
        write_certs(tmp_path, self.ca, self.server_cert)
        path = tmp_path / name
        path.unlink()
        if content == "dir":
            path.mkdir()
        elif content == "other key":
            path.write_bytes(pki.make_server_cert(self.ca, "tunnel.example").key_pem)
        elif content is not None:
            path.write_bytes(content)
        error = self.assertRaises(CertificateError, tls.server_tls_options, tmp_path)
        self.assertStartsWith(str(error), message.format(dir=tmp_path),
                              (name, content, str(error)))

    def test_ca_cert_missing(self) -> None:
        """A missing ca.crt is named."""
        self.check_server_options_file_error("ca.crt", None, "{dir}/ca.crt does not exist; ")

    def test_ca_cert_is_directory(self) -> None:
        """A ca.crt that is a directory is named."""
        self.check_server_options_file_error(
            "ca.crt", "dir", "cannot read {dir}/ca.crt: Is a directory; ")

    def test_ca_cert_empty(self) -> None:
        """An empty ca.crt is named."""
        self.check_server_options_file_error(
            "ca.crt", b"", "{dir}/ca.crt is not a PEM certificate ")

    def test_server_cert_garbage(self) -> None:
        """A server.crt that is not PEM is named."""
        self.check_server_options_file_error(
            "server.crt", b"garbage\n", "{dir}/server.crt is not a PEM certificate ")

    def test_server_cert_missing(self) -> None:
        """A missing server.crt is named."""
        self.check_server_options_file_error(
            "server.crt", None, "{dir}/server.crt does not exist; ")

    def test_server_key_bad_pem(self) -> None:
        """A server.key whose PEM body is not a key is named."""
        self.check_server_options_file_error(
            "server.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            "{dir}/server.key is not a PEM private key ")

    def test_server_key_other_pair(self) -> None:
        """A server.key from another pair is reported as not belonging to server.crt."""
        self.check_server_options_file_error(
            "server.key", "other key", "{dir}/server.key does not belong to {dir}/server.crt; ")

    def test_client_options_file_errors(self) -> None:
        """Client option errors name the missing file or the mismatched pair."""
        tmp_path = self.temp_dir()
        pki.write_public(tmp_path / "ca.crt", self.ca.cert_pem)
        pki.write_public(tmp_path / "me.crt", self.client_cert.cert_pem)
        pki.write_private(tmp_path / "me.key", pki.make_client_cert(self.ca, "laptop1").key_pem)
        error = self.assertRaises(
            CertificateError, tls.client_tls_options, "tunnel.example",
            tmp_path / "nope.crt", tmp_path / "me.crt", tmp_path / "me.key")
        self.assertIn("nope.crt does not exist", str(error))
        error = self.assertRaises(
            CertificateError, tls.client_tls_options, "tunnel.example",
            tmp_path / "ca.crt", tmp_path / "me.crt", tmp_path / "me.key")
        self.assertStartsWith(str(error),
                              f"{tmp_path}/me.key does not belong to {tmp_path}/me.crt")


class PeerCertificateTests(TLSTestCase):
    """peer_certificate_der on TLS protocols, wrappers and other transports."""

    def test_peer_certificate_der_edge_cases(self) -> None:
        """Non-TLS transports and certificate-less peers give None, through wrappers too."""
        self.assertIsNone(tls.peer_certificate_der(StringTransport()))
        self.assertIsNone(tls.peer_certificate_der(Wrapper(Wrapper(StringTransport()))))
        self.assertIsNone(tls.peer_certificate_der(Wrapper(FakeTLS())))
        looped = Wrapper(None)
        looped.transport = looped
        self.assertIsNone(tls.peer_certificate_der(looped))

    def test_peer_certificate_der_through_wrapper(self) -> None:
        """An object whose .transport is the TLS protocol (like a WebSocket) finds the cert."""
        server, _ = handshake(self.server_options, client_options(self.ca, self.client_cert))
        der = tls.peer_certificate_der(Wrapper(server))
        self.assertEqual(der, x509.load_pem_x509_certificate(
            self.client_cert.cert_pem).public_bytes(serialization.Encoding.DER))
