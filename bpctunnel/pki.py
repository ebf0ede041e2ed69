"""
Certificates and keys for bpctunnel's mutual TLS.

One private CA signs the server's certificate and every laptop's client
certificate; the client certificate's common name is the BackupPC host name.
Pure code on top of C{cryptography}: no reactor, no openssl command line.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from pathlib import Path
from typing import Sequence, Union

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bpctunnel.errors import CertificateError

CertLike = Union[bytes, x509.Certificate]

# Certificates start this far in the past so that a peer whose clock runs a
# little behind accepts a certificate issued a moment ago.
CLOCK_SKEW = datetime.timedelta(minutes=5)

_PEM_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"


@frozen
class CertAndKey:
    """A PEM certificate and its unencrypted PKCS#8 PEM private key."""

    cert_pem: bytes
    key_pem: bytes


@frozen
class CsrAndKey:
    """A PEM certificate signing request and its unencrypted PEM private key."""

    csr_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: small certificates and cheap handshakes for many laptops.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


#: The longest common name a certificate holds (RFC 5280, ub-common-name).
MAX_COMMON_NAME = 64


def _subject(common_name: str) -> x509.Name:
    if not common_name or len(common_name) > MAX_COMMON_NAME:
        raise CertificateError(
            f"common name {common_name!r} must be 1 to {MAX_COMMON_NAME} characters long; "
            f"use a shorter host name"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or not name.isascii() or any(c.isspace() for c in name):
        raise CertificateError(
            f"server name {name!r} is neither an IP address nor an ASCII DNS "
            f"name; give the name clients connect to, e.g. 'backup.example.org'"
        )
    return x509.DNSName(name)


def _key_usage(ca: bool) -> x509.KeyUsage:
    # A CA signs certificates (and CRLs); an ECDSA leaf signs handshakes.
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def _cn(name: x509.Name) -> str | None:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cns[0].value if cns and isinstance(cns[0].value, str) else None


def _builder(subject: x509.Name, issuer: x509.Name, public_key, days: int,
             limit: datetime.datetime | None = None) -> x509.CertificateBuilder:
    if days < 1:
        raise CertificateError(f"validity of {days} days is too short; use at least 1")
    now = datetime.datetime.now(datetime.timezone.utc)
    end = now + datetime.timedelta(days=days)
    if limit is not None:
        # A certificate outliving its CA would fail verification anyway.
        end = min(end, limit)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def make_ca(common_name: str = "bpctunnel CA", days: int = 3650) -> CertAndKey:
    """Create a self-signed CA that may sign leaf certificates only."""
    key = _new_key()
    name = _subject(common_name)
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertAndKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _issue(ca: CertAndKey, common_name: str, public_key, usage, days: int,
           names: Sequence[x509.GeneralName] = ()) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    builder = (
        _builder(_subject(common_name), ca_cert.subject, public_key, days,
                 limit=ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_server_cert(ca: CertAndKey, server_names: str | Sequence[str],
                     days: int = 825) -> CertAndKey:
    """
    Issue a serverAuth certificate for the names clients connect to.

    The first name becomes the common name; every name goes into the
    subjectAltName as a DNS name or, if it parses as one, an IPv4/IPv6 address.
    """
    names = [server_names] if isinstance(server_names, str) else list(server_names)
    if not names:
        raise CertificateError("no server name given; pass the host name clients connect to")
    key = _new_key()
    cert_pem = _issue(ca, names[0], key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
                      days, [_general_name(n) for n in names])
    return CertAndKey(cert_pem, _key_pem(key))


def make_client_cert(ca: CertAndKey, host: str, days: int = 825) -> CertAndKey:
    """Issue a clientAuth certificate whose common name is the BackupPC C{host}."""
    key = _new_key()
    cert_pem = _issue(ca, host, key.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, days)
    return CertAndKey(cert_pem, _key_pem(key))


def make_csr(host: str) -> CsrAndKey:
    """Create a new key and a CSR with CN=C{host}; the key never leaves the laptop."""
    key = _new_key()
    csr = x509.CertificateSigningRequestBuilder().subject_name(_subject(host)).sign(
        key, hashes.SHA256())
    return CsrAndKey(csr.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def sign_client_csr(ca: CertAndKey, csr_pem: bytes, days: int = 825, *,
                    expected_host: str | None = None) -> bytes:
    """
    Sign a client CSR and return the certificate PEM.

    Only the CSR's public key and common name are used; extensions the CSR
    asks for are ignored and clientAuth is set here.  If C{expected_host} is
    given the CN must equal it.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise CertificateError(
            "the data is not a PEM certificate signing request; pass the "
            "'-----BEGIN CERTIFICATE REQUEST-----' file made on the client"
        ) from None
    if not csr.is_signature_valid:
        raise CertificateError(
            "the certificate signing request has an invalid signature; "
            "create a new CSR on the client"
        )
    host = _cn(csr.subject)
    if host is None:
        raise CertificateError(
            f"the certificate signing request has no common name (subject "
            f"{csr.subject.rfc4514_string()!r}); create it with CN=<BackupPC host name>"
        )
    if expected_host is not None and host != expected_host:
        raise CertificateError(
            f"the certificate signing request is for {host!r}, not "
            f"{expected_host!r}; create a CSR for {expected_host!r}"
        )
    return _issue(ca, host, csr.public_key(), ExtendedKeyUsageOID.CLIENT_AUTH, days)


def _as_cert(cert: CertLike) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        if _PEM_CERT_MARKER in cert:
            return x509.load_pem_x509_certificate(cert)
        return x509.load_der_x509_certificate(cert)
    except ValueError:
        raise CertificateError(
            f"data starting {bytes(cert[:20])!r} is neither a PEM nor a DER certificate"
        ) from None


def fingerprint_sha256(cert: CertLike) -> str:
    """Lowercase hex SHA-256 of the certificate's DER encoding (PEM or DER input)."""
    return _as_cert(cert).fingerprint(hashes.SHA256()).hex()


def common_name(cert: CertLike) -> str:
    """The certificate's subject common name (for clients: the BackupPC host)."""
    subject = _as_cert(cert).subject
    name = _cn(subject)
    if name is None:
        raise CertificateError(
            f"certificate {subject.rfc4514_string()!r} has no common name; "
            f"issue it with CN=<BackupPC host name>"
        )
    return name


def not_after(cert: CertLike) -> datetime.datetime:
    """The end of the certificate's validity as an aware UTC datetime."""
    return _as_cert(cert).not_valid_after_utc


def now() -> datetime.datetime:
    """The current time, aware UTC (one place to change for tests)."""
    return datetime.datetime.now(datetime.timezone.utc)


def days_left(cert: CertLike, at: datetime.datetime | None = None) -> float:
    """Days until the certificate expires (negative once it has)."""
    return (not_after(cert) - (at or now())).total_seconds() / 86400


def csr_matches_cert(csr_pem: bytes, cert: CertLike) -> bool:
    """Whether a certificate was issued for the key of this CSR."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return csr.public_key().public_bytes(der, spki) == _as_cert(cert).public_key().public_bytes(der, spki)


def read_file(path: os.PathLike | str) -> bytes:
    """Read a certificate or key file; L{CertificateError} names it on failure."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(
            f"{path} does not exist; check the path or create the file "
            f"(bpctunnel init-ca / register-client)"
        ) from None
    except OSError as e:
        raise CertificateError(
            f"cannot read {path}: {e.strerror or e}; check that it is a "
            f"readable file"
        ) from None


def parse_certs(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates of a PEM bundle; C{source} names it in errors."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertificateError(
            f"{source} is not a PEM certificate (expected a "
            f"'-----BEGIN CERTIFICATE-----' block); replace it with the "
            f"certificate bpctunnel issued"
        )
    return certs


def parse_key(data: bytes, source: str):
    """An unencrypted PEM private key; C{source} names it in errors."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{source} is an encrypted private key; bpctunnel needs it "
            f"unencrypted (protect it with file mode 0600 instead)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CertificateError(
            f"{source} is not a PEM private key (expected a "
            f"'-----BEGIN PRIVATE KEY-----' block); replace it with the key "
            f"generated together with its certificate"
        ) from None


def load_cert(path: os.PathLike | str) -> x509.Certificate:
    """Load the first certificate of a PEM file."""
    return parse_certs(read_file(path), str(path))[0]


def load_key(path: os.PathLike | str):
    """Load an unencrypted PEM private key file."""
    return parse_key(read_file(path), str(path))


def check_key_matches(cert: x509.Certificate, key, cert_path: object,
                      key_path: object) -> None:
    """Raise L{CertificateError} unless C{key} is the private key of C{cert}."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise CertificateError(
            f"{key_path} does not belong to {cert_path}; install the key that "
            f"was generated together with this certificate"
        )


def _write_atomic(path: os.PathLike | str, data: bytes, mode: int) -> None:
    path = Path(path)
    try:
        # mkstemp creates the file 0600, so private data is never exposed,
        # and os.replace means readers see the old or the new file, never half.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CertificateError(
            f"cannot write {path}: {e.strerror or e}; check that "
            f"{path.parent} exists and is writable"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise CertificateError(
            f"cannot write {path}: {e.strerror or e}; check free space and permissions"
        ) from None


def write_private(path: os.PathLike | str, data: bytes) -> None:
    """Atomically write a private key or secret with mode 0600."""
    _write_atomic(path, data, 0o600)


def write_public(path: os.PathLike | str, data: bytes) -> None:
    """Atomically write a certificate with mode 0644."""
    _write_atomic(path, data, 0o644)
