"""Tests for L{bpctunnel.pki}: issuing, checking, loading and writing certificates."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import ipaddress
import os
import shutil
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

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


@functools.cache
def shared_ca() -> pki.CertAndKey:
    """One CA for the whole module (making keys is slow)."""
    return pki.make_ca()


def server_verifier(ca: pki.CertAndKey, name: x509.GeneralName):
    return PolicyBuilder().store(Store([load(ca.cert_pem)])).build_server_verifier(name)


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([f"-----BEGIN {label}-----".encode(), *lines,
                       f"-----END {label}-----".encode(), b""])


class PKITestCase(SynchronousTestCase):
    """Shared helpers: the module CA, a temporary folder, a restorable umask."""

    def setUp(self) -> None:
        self.ca = shared_ca()

    def temp_dir(self) -> Path:
        """A new empty folder outside the current folder, removed after the test."""
        path = Path(tempfile.mkdtemp(prefix="bpctunnel-test-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def umask(self, mask: int) -> None:
        """Set the process umask for this test; the old one is restored afterwards."""
        old = os.umask(mask)
        self.addCleanup(os.umask, old)

    def assertStartsWith(self, text: str, prefix: str, msg=None) -> None:
        self.assertTrue(text.startswith(prefix),
                        msg if msg is not None else f"{text!r} does not start with {prefix!r}")


class MakeCATests(PKITestCase):
    """make_ca and the serial numbers of issued certificates."""

    def test_ca_is_self_signed_leaf_only_ca(self) -> None:
        """make_ca returns a self-signed P-256 CA limited to signing leaves."""
        before = now()
        ca = pki.make_ca(days=30)
        after = now() + datetime.timedelta(seconds=1)
        cert = load(ca.cert_pem)
        cert.verify_directly_issued_by(cert)
        self.assertEqual(pki.common_name(cert), "bpctunnel CA")
        bc = ext(cert, x509.BasicConstraints)
        self.assertEqual((bc.critical, bc.value.ca, bc.value.path_length), (True, True, 0))
        ku = ext(cert, x509.KeyUsage).value
        self.assertEqual((ku.key_cert_sign, ku.crl_sign, ku.digital_signature),
                         (True, True, False))
        self.assertEqual(ext(cert, x509.SubjectKeyIdentifier).value,
                         x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertIsInstance(cert.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(cert.public_key().curve.name, "secp256r1")
        self.assertLessEqual(before - SKEW, cert.not_valid_before_utc)
        self.assertLessEqual(cert.not_valid_before_utc, after - SKEW)
        self.assertLessEqual(before + datetime.timedelta(days=30), cert.not_valid_after_utc)
        self.assertLessEqual(cert.not_valid_after_utc, after + datetime.timedelta(days=30))
        self.assertTrue(ca.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n"), ca.key_pem)

    def test_serials_are_random(self) -> None:
        """Two certificates issued in a row get different, large serial numbers."""
        a, b = load(pki.make_ca().cert_pem), load(pki.make_ca().cert_pem)
        self.assertNotEqual(a.serial_number, b.serial_number)
        self.assertGreater(max(a.serial_number, b.serial_number), 2**64)


class ServerCertTests(PKITestCase):
    """make_server_cert: names, SANs, extensions and refusals."""

    def test_server_cert_verifies_for_dns_name(self) -> None:
        """A server certificate chains to the CA and is valid for its DNS name only."""
        ca = self.ca
        server = pki.make_server_cert(ca, "tunnel.example")
        cert = load(server.cert_pem)
        chain = server_verifier(ca, x509.DNSName("tunnel.example")).verify(cert, [])
        self.assertEqual([c.subject for c in chain], [cert.subject, load(ca.cert_pem).subject])
        self.assertRaises(x509.verification.VerificationError,
                          server_verifier(ca, x509.DNSName("other.example")).verify, cert, [])
        self.assertEqual(pki.common_name(cert), "tunnel.example")
        self.assertEqual(list(ext(cert, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertIs(ext(cert, x509.BasicConstraints).value.ca, False)
        self.assertEqual(ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
                         ext(load(ca.cert_pem), x509.SubjectKeyIdentifier).value.digest)
        self.assertEqual(ext(cert, x509.SubjectAlternativeName).value,
                         x509.SubjectAlternativeName([x509.DNSName("tunnel.example")]))
        pki.check_key_matches(cert, serialization.load_pem_private_key(server.key_pem, None),
                              "server.crt", "server.key")

    def check_server_cert_ip_address(self, address: str) -> None:
        """An IPv4 or IPv6 server name becomes an IPAddress SAN that verifies."""
        cert = load(pki.make_server_cert(self.ca, address).cert_pem)
        ip = ipaddress.ip_address(address)
        self.assertEqual(ext(cert, x509.SubjectAlternativeName).value,
                         x509.SubjectAlternativeName([x509.IPAddress(ip)]), address)
        server_verifier(self.ca, x509.IPAddress(ip)).verify(cert, [])

    def test_server_cert_ipv4_address(self) -> None:
        """An IPv4 server name becomes an IPAddress SAN that verifies."""
        self.check_server_cert_ip_address("192.0.2.7")

    def test_server_cert_ipv6_address(self) -> None:
        """An IPv6 server name becomes an IPAddress SAN that verifies."""
        self.check_server_cert_ip_address("2001:db8::7")

    @settings(max_examples=25, deadline=None)
    @given(st.ip_addresses())
    def test_any_ip_becomes_ip_san(self, address) -> None:
        """Every IPv4/IPv6 address, in its string form, becomes exactly that IP SAN."""
        ca = pki.make_ca()
        cert = load(pki.make_server_cert(ca, str(address)).cert_pem)
        self.assertEqual(
            ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress),
            [address])

    def test_server_cert_several_names(self) -> None:
        """Several server names all go into the SAN; the first is the CN."""
        cert = load(pki.make_server_cert(
            self.ca, ["tunnel.example", "10.1.2.3", "::1"]).cert_pem)
        self.assertEqual(pki.common_name(cert), "tunnel.example")
        self.assertEqual(list(ext(cert, x509.SubjectAlternativeName).value), [
            x509.DNSName("tunnel.example"),
            x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ])

    def check_server_cert_bad_names(self, names, message: str) -> None:
        """Unusable server names are refused with a message naming the problem."""
        error = self.assertRaises(CertificateError, pki.make_server_cert, self.ca, names)
        self.assertIn(message, str(error), names)

    def test_server_cert_no_names(self) -> None:
        """An empty list of server names is refused."""
        self.check_server_cert_bad_names([], "no server name given")

    def test_server_cert_name_with_space(self) -> None:
        """A name that is neither an IP address nor a DNS name is refused."""
        self.check_server_cert_bad_names(
            "bad name", "server name 'bad name' is neither an IP address nor an ASCII DNS name")

    def test_server_cert_name_too_long(self) -> None:
        """A name too long for the CN is refused."""
        self.check_server_cert_bad_names("x" * 65, "must be 1 to 64 characters long")


class ClientCertTests(PKITestCase):
    """make_client_cert, validity capping and fingerprints."""

    def test_client_cert(self) -> None:
        """A client certificate has CN=host, clientAuth only, and chains to the CA."""
        cert = load(pki.make_client_cert(self.ca, "laptop1").cert_pem)
        cert.verify_directly_issued_by(load(self.ca.cert_pem))
        # Same CA name, different key:
        self.assertRaises(InvalidSignature, cert.verify_directly_issued_by,
                          load(pki.make_ca().cert_pem))
        self.assertEqual(pki.common_name(cert), "laptop1")
        self.assertEqual(list(ext(cert, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertIs(ext(cert, x509.BasicConstraints).value.ca, False)

    def test_leaf_never_outlives_ca(self) -> None:
        """A leaf's notAfter is capped at its CA's notAfter."""
        short = pki.make_ca(days=10)
        cert = load(pki.make_client_cert(short, "laptop1", days=825).cert_pem)
        self.assertEqual(cert.not_valid_after_utc, load(short.cert_pem).not_valid_after_utc)

    def test_fingerprint_is_sha256_of_der(self) -> None:
        """The fingerprint is the lowercase hex SHA-256 of the DER, for any input form."""
        cert = load(pki.make_client_cert(self.ca, "laptop1").cert_pem)
        der = cert.public_bytes(serialization.Encoding.DER)
        expected = hashlib.sha256(der).hexdigest()
        pem = cert.public_bytes(serialization.Encoding.PEM)
        self.assertEqual([pki.fingerprint_sha256(x) for x in (pem, der, cert)], [expected] * 3)
        self.assertEqual(len(expected), 64)
        self.assertEqual(expected, expected.lower())
        error = self.assertRaises(CertificateError, pki.fingerprint_sha256, b"garbage")
        self.assertIn("neither a PEM nor a DER certificate", str(error))


class CSRTests(PKITestCase):
    """make_csr and sign_client_csr."""

    def test_csr_round_trip(self) -> None:
        """The CA signs a CSR without its key: the cert carries the CSR's key and CN."""
        request = pki.make_csr("laptop7")
        cert = load(pki.sign_client_csr(self.ca, request.csr_pem, expected_host="laptop7"))
        cert.verify_directly_issued_by(load(self.ca.cert_pem))
        self.assertEqual(pki.common_name(cert), "laptop7")
        self.assertEqual(list(ext(cert, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.CLIENT_AUTH])
        pki.check_key_matches(cert, serialization.load_pem_private_key(request.key_pem, None),
                              "laptop7.crt", "laptop7.key")

    def test_csr_requested_extensions_ignored(self) -> None:
        """A CSR asking to be a CA / server for other names gets a plain client cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "laptop1")]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        cert = load(pki.sign_client_csr(self.ca, csr.public_bytes(serialization.Encoding.PEM)))
        self.assertIs(ext(cert, x509.BasicConstraints).value.ca, False)
        self.assertEqual(list(ext(cert, x509.ExtendedKeyUsage).value),
                         [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertRaises(x509.ExtensionNotFound, ext, cert, x509.SubjectAlternativeName)

    def test_csr_bad_signature_rejected(self) -> None:
        """A CSR whose CN was altered after signing is refused."""
        der = x509.load_pem_x509_csr(pki.make_csr("laptop1").csr_pem).public_bytes(
            serialization.Encoding.DER)
        tampered = _pem(der.replace(b"laptop1", b"laptop2"), "CERTIFICATE REQUEST")
        self.assertEqual(x509.load_pem_x509_csr(tampered).subject.rfc4514_string(), "CN=laptop2")
        error = self.assertRaises(CertificateError, pki.sign_client_csr, self.ca, tampered)
        self.assertIn("has an invalid signature", str(error))

    def test_csr_without_cn_rejected(self) -> None:
        """A CSR with no common name is refused, naming its subject."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme")]))
            .sign(key, hashes.SHA256())
        )
        error = self.assertRaises(CertificateError, pki.sign_client_csr, self.ca,
                                  csr.public_bytes(serialization.Encoding.PEM))
        self.assertIn("has no common name (subject 'O=Acme')", str(error))

    def test_csr_garbage_and_wrong_host_rejected(self) -> None:
        """Non-CSR data and a CSR for another host are refused."""
        error = self.assertRaises(CertificateError, pki.sign_client_csr,
                                  self.ca, self.ca.cert_pem)
        self.assertIn("not a PEM certificate signing request", str(error))
        error = self.assertRaises(CertificateError, pki.sign_client_csr, self.ca,
                                  pki.make_csr("laptop1").csr_pem, expected_host="laptop2")
        self.assertIn("is for 'laptop1', not 'laptop2'", str(error))


class CertificateInspectionTests(PKITestCase):
    """common_name, not_after and check_key_matches."""

    def test_common_name_missing_and_not_after(self) -> None:
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
        error = self.assertRaises(CertificateError, pki.common_name, cert)
        self.assertIn("certificate 'O=Acme' has no common name", str(error))
        end = pki.not_after(cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(end, datetime.datetime(2030, 1, 3, 3, 4, 5,
                                                tzinfo=datetime.timezone.utc))
        self.assertEqual(end.utcoffset(), datetime.timedelta(0))

    def test_key_mismatch(self) -> None:
        """A key from another pair is reported as not belonging to the cert."""
        cert = load(pki.make_server_cert(self.ca, "tunnel.example").cert_pem)
        other = serialization.load_pem_private_key(
            pki.make_client_cert(self.ca, "x").key_pem, None)
        error = self.assertRaises(CertificateError, pki.check_key_matches, cert, other,
                                  "/etc/bpc/server.crt", "/etc/bpc/server.key")
        self.assertStartsWith(str(error),
                              "/etc/bpc/server.key does not belong to /etc/bpc/server.crt; ")


class FileTests(PKITestCase):
    """load_cert, load_key, write_public and write_private."""

    def test_load_cert_and_key_round_trip(self) -> None:
        """Files written by write_public/write_private load back identically."""
        tmp_path = self.temp_dir()
        pki.write_public(tmp_path / "ca.crt", self.ca.cert_pem)
        pki.write_private(tmp_path / "ca.key", self.ca.key_pem)
        cert, key = pki.load_cert(tmp_path / "ca.crt"), pki.load_key(tmp_path / "ca.key")
        self.assertEqual(cert, load(self.ca.cert_pem))
        pki.check_key_matches(cert, key, "ca.crt", "ca.key")

    def test_load_errors(self) -> None:
        """Each way a file can be wrong gives its own message naming the file."""
        tmp_path = self.temp_dir()
        missing, folder, junk = tmp_path / "missing.crt", tmp_path / "dir.crt", tmp_path / "junk"
        folder.mkdir()
        junk.write_bytes(b"hello\n")
        key_file, cert_file = tmp_path / "k.key", tmp_path / "c.crt"
        key_file.write_bytes(self.ca.key_pem)
        cert_file.write_bytes(self.ca.cert_pem)
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
            error = self.assertRaises(CertificateError, loader, path)
            self.assertStartsWith(str(error), message, (loader, path, str(error)))

    def test_load_encrypted_key(self) -> None:
        """A passphrase-protected key is refused with a hint to store it unencrypted."""
        key = ec.generate_private_key(ec.SECP256R1())
        path = self.temp_dir() / "enc.key"
        path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
        error = self.assertRaises(CertificateError, pki.load_key, path)
        self.assertIn("is an encrypted private key", str(error))

    def test_write_private_mode_0600(self) -> None:
        """write_private replaces a world-readable file with a 0600 one, ignoring umask."""
        tmp_path = self.temp_dir()
        path = tmp_path / "server.key"
        path.write_bytes(b"old")
        path.chmod(0o644)
        self.umask(0)
        pki.write_private(path, b"secret\n")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(path.read_bytes(), b"secret\n")
        self.assertEqual(sorted(p.name for p in tmp_path.iterdir()), ["server.key"])

    def test_write_public_mode_0644(self) -> None:
        """write_public creates a 0644 file even under a strict umask."""
        tmp_path = self.temp_dir()
        self.umask(0o077)
        path = tmp_path / "ca.crt"
        pki.write_public(path, b"cert\n")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o644)
        self.assertEqual(path.read_bytes(), b"cert\n")

    def test_write_into_missing_dir(self) -> None:
        """Writing into a missing directory names the directory to create."""
        tmp_path = self.temp_dir()
        error = self.assertRaises(CertificateError, pki.write_private,
                                  tmp_path / "nope" / "x.key", b"k")
        self.assertIn(f"check that {tmp_path / 'nope'} exists", str(error))
