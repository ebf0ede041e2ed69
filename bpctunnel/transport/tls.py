"""
Twisted TLS options for bpctunnel's mutual TLS (TLS 1.3 only).

The server presents C{server.crt} and accepts only clients whose certificate
chains to C{ca.crt}; the client checks the server's certificate against its
CA and the server's host name (via service-identity) and presents its own.
No reactor is imported here; the results go to C{SSL4ServerEndpoint} /
C{wrapClientTLS}.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL.crypto import X509
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)

from bpctunnel.pki import check_key_matches, parse_certs, parse_key, read_file

CA_FILE = "ca.crt"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"

MINIMUM_TLS_VERSION = TLSVersion.TLSv1_3

#: TLS 1.3 cipher suites in the server's order of preference.  AES-128-GCM
#: (the suite every TLS 1.3 peer must have) costs about 10% less CPU per
#: byte than AES-256-GCM with AES instructions; all three are strong.
TLS13_CIPHERSUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _x509(cert: x509.Certificate) -> X509:
    # Only the CA store (X509Store.add_cert) still needs pyOpenSSL objects.
    return X509.from_cryptography(cert)


def _leaf_and_key(cert_pem: bytes, key_pem: bytes, cert_source: str,
                  key_source: str) -> tuple[list[x509.Certificate], object]:
    chain = parse_certs(cert_pem, cert_source)
    key = parse_key(key_pem, key_source)
    check_key_matches(chain[0], key, cert_source, key_source)
    return chain, key


def server_tls_options_from(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *,
    ca_source: str = "the CA certificate",
    cert_source: str = "the server certificate",
    key_source: str = "the server key",
) -> CertificateOptions:
    """
    Server TLS options (an C{IOpenSSLContextFactory}) from PEM bytes.

    Clients must present a certificate that chains to one of the
    certificates in C{ca_pem}, or the handshake fails.  C{cert_pem} may carry
    intermediates after the leaf.  The C{*_source} names appear in
    L{CertificateError} messages.
    """
    ca_certs = parse_certs(ca_pem, ca_source)
    chain, key = _leaf_and_key(cert_pem, key_pem, cert_source, key_source)
    # The leaf and key go in as cryptography objects (see client_tls_options_from).
    options = CertificateOptions(
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
        # The client certificate is the client's identity: without one that
        # our CA signed there is no tunnel.
        verify=True,
        requireCertificate=True,
        caCerts=[_x509(c) for c in ca_certs],
        raiseMinimumTo=MINIMUM_TLS_VERSION,
    )
    # The server's preference decides (Twisted sets it): AES-128-GCM first.
    options.getContext().set_tls13_ciphersuites(TLS13_CIPHERSUITES)
    return options


def server_tls_options(certs_dir: os.PathLike | str) -> CertificateOptions:
    """
    Server TLS options from C{ca.crt}, C{server.crt} and C{server.key} in
    C{certs_dir}; a L{CertificateError} names the offending file.
    """
    paths = [Path(certs_dir) / name for name in (CA_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE)]
    ca_pem, cert_pem, key_pem = (read_file(p) for p in paths)
    return server_tls_options_from(
        ca_pem, cert_pem, key_pem,
        ca_source=str(paths[0]), cert_source=str(paths[1]), key_source=str(paths[2]),
    )


def client_tls_options_from(
    server_host: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *,
    ca_source: str = "the CA certificate",
    cert_source: str = "the client certificate",
    key_source: str = "the client key",
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS options from PEM bytes.

    The server's certificate must chain to C{ca_pem} and match
    C{server_host} (a DNS name or an IP address); the client presents
    C{cert_pem}/C{key_pem}.
    """
    ca_certs = parse_certs(ca_pem, ca_source)
    chain, key = _leaf_and_key(cert_pem, key_pem, cert_source, key_source)
    return optionsForClientTLS(
        server_host,
        trustRoot=trustRootFromCertificates([Certificate(_x509(c)) for c in ca_certs]),
        # Our own certificate goes in as cryptography objects rather than as
        # clientCertificate=PrivateCertificate(...): pyOpenSSL deprecates
        # pyOpenSSL X509/PKey objects in Context.use_certificate/use_privatekey.
        extraCertificateOptions={
            "privateKey": key,
            "certificate": chain[0],
            "extraCertChain": chain[1:],
            "raiseMinimumTo": MINIMUM_TLS_VERSION,
        },
    )


def client_tls_options(server_host: str, ca_path: os.PathLike | str,
                       cert_path: os.PathLike | str,
                       key_path: os.PathLike | str) -> IOpenSSLClientConnectionCreator:
    """Client TLS options from PEM files; a L{CertificateError} names the bad file."""
    return client_tls_options_from(
        server_host, read_file(ca_path), read_file(cert_path), read_file(key_path),
        ca_source=str(ca_path), cert_source=str(cert_path), key_source=str(key_path),
    )


def peer_certificate_der(transport: object) -> bytes | None:
    """
    The DER certificate the TLS peer presented, or C{None} if it presented
    none or C{transport} is not (and does not wrap) a TLS transport.

    Follows C{.transport} links, so a WebSocket protocol's transport (or the
    protocol itself) works as well as the TLS protocol.
    """
    seen: set[int] = set()
    current = transport
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        getter = getattr(current, "getPeerCertificate", None)
        if callable(getter):
            cert = getter()
            if cert is None:
                return None
            return cert.to_cryptography().public_bytes(Encoding.DER)
        current = getattr(current, "transport", None)
    return None
