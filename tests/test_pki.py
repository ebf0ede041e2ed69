"""Tests for L{bpctunnel.pki}: issuing, checking, loading and writing certificates."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from hypothesis import given, settings
from hypothesis import strategies as st

from bpctunnel import pki
from bpctunnel.errors import CertificateError

SKEW = datetime.timedelta(minutes=5)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


def now() -> datetime.datetime:
    # X.509 times have whole seconds.
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> pki.CertAndKey:
    return pki.make_ca()


def server_verifier(ca: pki.CertAndKey, name: x509.GeneralName):
    return PolicyBuilder().store(Store([load(ca.cert_pem)])).build_server_verifier(name)


def test_ca_is_self_signed_leaf_only_ca() -> None:
    """make_ca returns a self-signed P-256 CA limited to signing leaves."""
    before = now()
    ca = pki.make_ca(days=30)
    after = now() + datetime.timedelta(seconds=1)
    cert = load(ca.cert_pem)
    cert.verify_directly_issued_by(cert)
    assert pki.common_name(cert) == "bpctunnel CA"
    bc = ext(cert, x509.BasicConstraints)
    assert (bc.critical, bc.value.ca, bc.value.path_length) == (True, True, 0)
    ku = ext(cert, x509.KeyUsage).value
    assert (ku.key_cert_sign, ku.crl_sign, ku.digital_signature) == (True, True, False)
    assert ext(cert, x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert before - SKEW <= cert.not_valid_before_utc <= after - SKEW
    assert before + datetime.timedelta(days=30) <= cert.not_valid_after_utc
    assert cert.not_valid_after_utc <= after + datetime.timedelta(days=30)
    assert ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")


def test_serials_are_random() -> None:
    """Two certificates issued in a row get different, large serial numbers."""
    a, b = load(pki.make_ca().cert_pem), load(pki.make_ca().cert_pem)
    assert a.serial_number != b.serial_number
    assert max(a.serial_number, b.serial_number) > 2**64


def test_server_cert_verifies_for_dns_name(ca: pki.CertAndKey) -> None:
    """A server certificate chains to the CA and is valid for its DNS name only."""
    server = pki.make_server_cert(ca, "tunnel.example")
    cert = load(server.cert_pem)
    chain = server_verifier(ca, x509.DNSName("tunnel.example")).verify(cert, [])
    assert [c.subject for c in chain] == [cert.subject, load(ca.cert_pem).subject]
    with pytest.raises(x509.verification.VerificationError):
        server_verifier(ca, x509.DNSName("other.example")).verify(cert, [])
    assert pki.common_name(cert) == "tunnel.example"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(load(ca.cert_pem), x509.SubjectKeyIdentifier).value.digest
    assert ext(cert, x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.DNSName("tunnel.example")])
    pki.check_key_matches(cert, serialization.load_pem_private_key(server.key_pem, None),
                          "server.crt", "server.key")


@pytest.mark.parametrize("address", ["192.0.2.7", "2001:db8::7"])
def test_server_cert_ip_address(ca: pki.CertAndKey, address: str) -> None:
    """An IPv4 or IPv6 server name becomes an IPAddress SAN that verifies."""
    cert = load(pki.make_server_cert(ca, address).cert_pem)
    ip = ipaddress.ip_address(address)
    assert ext(cert, x509.SubjectAlternativeName).value == \
        x509.SubjectAlternativeName([x509.IPAddress(ip)])
    server_verifier(ca, x509.IPAddress(ip)).verify(cert, [])


@settings(max_examples=25, deadline=None)
@given(st.ip_addresses())
def test_any_ip_becomes_ip_san(address) -> None:
    """Every IPv4/IPv6 address, in its string form, becomes exactly that IP SAN."""
    ca = pki.make_ca()
    cert = load(pki.make_server_cert(ca, str(address)).cert_pem)
    assert ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.IPAddress) == [address]


def test_server_cert_several_names(ca: pki.CertAndKey) -> None:
    """Several server names all go into the SAN; the first is the CN."""
    cert = load(pki.make_server_cert(ca, ["tunnel.example", "10.1.2.3", "::1"]).cert_pem)
    assert pki.common_name(cert) == "tunnel.example"
    assert list(ext(cert, x509.SubjectAlternativeName).value) == [
        x509.DNSName("tunnel.example"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


@pytest.mark.parametrize("names, message", [
    ([], "no server name given"),
    ("bad name", "server name 'bad name' is neither an IP address nor an ASCII DNS name"),
    ("x" * 65, "must be 1 to 64 characters long"),
])
def test_server_cert_bad_names(ca: pki.CertAndKey, names, message: str) -> None:
    """Unusable server names are refused with a message naming the problem."""
    with pytest.raises(CertificateError, match=message):
        pki.make_server_cert(ca, names)


def test_client_cert(ca: pki.CertAndKey) -> None:
    """A client certificate has CN=host, clientAuth only, and chains to the CA."""
    cert = load(pki.make_client_cert(ca, "laptop1").cert_pem)
    cert.verify_directly_issued_by(load(ca.cert_pem))
    with pytest.raises(InvalidSignature):  # same CA name, different key
        cert.verify_directly_issued_by(load(pki.make_ca().cert_pem))
    assert pki.common_name(cert) == "laptop1"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ext(cert, x509.BasicConstraints).value.ca is False


def test_leaf_never_outlives_ca() -> None:
    """A leaf's notAfter is capped at its CA's notAfter."""
    short = pki.make_ca(days=10)
    cert = load(pki.make_client_cert(short, "laptop1", days=825).cert_pem)
    assert cert.not_valid_after_utc == load(short.cert_pem).not_valid_after_utc


def test_fingerprint_is_sha256_of_der(ca: pki.CertAndKey) -> None:
    """The fingerprint is the lowercase hex SHA-256 of the DER, for any input form."""
    cert = load(pki.make_client_cert(ca, "laptop1").cert_pem)
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert [pki.fingerprint_sha256(x) for x in (pem, der, cert)] == [expected] * 3
    assert len(expected) == 64 and expected == expected.lower()
    with pytest.raises(CertificateError, match="neither a PEM nor a DER certificate"):
        pki.fingerprint_sha256(b"garbage")


def test_csr_round_trip(ca: pki.CertAndKey) -> None:
    """The CA signs a CSR without its key: the cert carries the CSR's key and CN."""
    request = pki.make_csr("laptop7")
    cert = load(pki.sign_client_csr(ca, request.csr_pem, expected_host="laptop7"))
    cert.verify_directly_issued_by(load(ca.cert_pem))
    assert pki.common_name(cert) == "laptop7"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    pki.check_key_matches(cert, serialization.load_pem_private_key(request.key_pem, None),
                          "laptop7.crt", "laptop7.key")


def test_csr_requested_extensions_ignored(ca: pki.CertAndKey) -> None:
    """A CSR asking to be a CA / server for other names gets a plain client cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "laptop1")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert = load(pki.sign_client_csr(ca, csr.public_bytes(serialization.Encoding.PEM)))
    assert ext(cert, x509.BasicConstraints).value.ca is False
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([f"-----BEGIN {label}-----".encode(), *lines,
                       f"-----END {label}-----".encode(), b""])


def test_csr_bad_signature_rejected(ca: pki.CertAndKey) -> None:
    """A CSR whose CN was altered after signing is refused."""
    der = x509.load_pem_x509_csr(pki.make_csr("laptop1").csr_pem).public_bytes(
        serialization.Encoding.DER)
    tampered = _pem(der.replace(b"laptop1", b"laptop2"), "CERTIFICATE REQUEST")
    assert x509.load_pem_x509_csr(tampered).subject.rfc4514_string() == "CN=laptop2"
    with pytest.raises(CertificateError, match="has an invalid signature"):
        pki.sign_client_csr(ca, tampered)


def test_csr_without_cn_rejected(ca: pki.CertAndKey) -> None:
    """A CSR with no common name is refused, naming its subject."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="has no common name \\(subject 'O=Acme'\\)"):
        pki.sign_client_csr(ca, csr.public_bytes(serialization.Encoding.PEM))


def test_csr_garbage_and_wrong_host_rejected(ca: pki.CertAndKey) -> None:
    """Non-CSR data and a CSR for another host are refused."""
    with pytest.raises(CertificateError, match="not a PEM certificate signing request"):
        pki.sign_client_csr(ca, ca.cert_pem)
    with pytest.raises(CertificateError, match="is for 'laptop1', not 'laptop2'"):
        pki.sign_client_csr(ca, pki.make_csr("laptop1").csr_pem, expected_host="laptop2")


def test_common_name_missing_and_not_after(ca: pki.CertAndKey) -> None:
    """common_name refuses a CN-less cert; not_after is aware UTC."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")])
    start = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CertificateError, match="certificate 'O=Acme' has no common name"):
        pki.common_name(cert)
    end = pki.not_after(cert.public_bytes(serialization.Encoding.DER))
    assert end == datetime.datetime(2030, 1, 3, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert end.utcoffset() == datetime.timedelta(0)


def test_key_mismatch(ca: pki.CertAndKey) -> None:
    """A key from another pair is reported as not belonging to the cert."""
    cert = load(pki.make_server_cert(ca, "tunnel.example").cert_pem)
    other = serialization.load_pem_private_key(pki.make_client_cert(ca, "x").key_pem, None)
    with pytest.raises(CertificateError) as info:
        pki.check_key_matches(cert, other, "/etc/bpc/server.crt", "/etc/bpc/server.key")
    assert str(info.value).startswith(
        "/etc/bpc/server.key does not belong to /etc/bpc/server.crt; ")


def test_load_cert_and_key_round_trip(tmp_path, ca: pki.CertAndKey) -> None:
    """Files written by write_public/write_private load back identically."""
    pki.write_public(tmp_path / "ca.crt", ca.cert_pem)
    pki.write_private(tmp_path / "ca.key", ca.key_pem)
    cert, key = pki.load_cert(tmp_path / "ca.crt"), pki.load_key(tmp_path / "ca.key")
    assert cert == load(ca.cert_pem)
    pki.check_key_matches(cert, key, "ca.crt", "ca.key")


def test_load_errors(tmp_path, ca: pki.CertAndKey) -> None:
    """Each way a file can be wrong gives its own message naming the file."""
    missing, folder, junk = tmp_path / "missing.crt", tmp_path / "dir.crt", tmp_path / "junk"
    folder.mkdir()
    junk.write_bytes(b"hello\n")
    key_file, cert_file = tmp_path / "k.key", tmp_path / "c.crt"
    key_file.write_bytes(ca.key_pem)
    cert_file.write_bytes(ca.cert_pem)
    cases = [
        (pki.load_cert, missing, f"{missing} does not exist; "),
        (pki.load_cert, folder, f"cannot read {folder}: Is a directory; "),
        (pki.load_cert, junk, f"{junk} is not a PEM certificate "),
        (pki.load_cert, key_file, f"{key_file} is not a PEM certificate "),
        (pki.load_key, missing, f"{missing} does not exist; "),
        (pki.load_key, junk, f"{junk} is not a PEM private key "),
        (pki.load_key, cert_file, f"{cert_file} is not a PEM private key "),
    ]
    for loader, path, message in cases:
        with pytest.raises(CertificateError) as info:
            loader(path)
        assert str(info.value).startswith(message), (loader, path, str(info.value))


def test_load_encrypted_key(tmp_path) -> None:
    """A passphrase-protected key is refused with a hint to store it unencrypted."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "enc.key"
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(CertificateError, match="is an encrypted private key"):
        pki.load_key(path)


@pytest.fixture
def umask():
    old = os.umask(0)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_write_private_mode_0600(tmp_path, umask) -> None:
    """write_private replaces a world-readable file with a 0600 one, ignoring umask."""
    path = tmp_path / "server.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    umask(0)
    pki.write_private(path, b"secret\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"secret\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


def test_write_public_mode_0644(tmp_path, umask) -> None:
    """write_public creates a 0644 file even under a strict umask."""
    umask(0o077)
    path = tmp_path / "ca.crt"
    pki.write_public(path, b"cert\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == b"cert\n"


def test_write_into_missing_dir(tmp_path) -> None:
    """Writing into a missing directory names the directory to create."""
    with pytest.raises(CertificateError, match=f"check that {tmp_path / 'nope'} exists"):
        pki.write_private(tmp_path / "nope" / "x.key", b"k")
