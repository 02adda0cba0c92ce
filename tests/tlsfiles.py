"""
Test certificates made with C{cryptography}: a CA, and server certificates
it signs, written as PEM files the way an operator (or certbot) has them.

EC P-256 keys: quick to make, so a test can make a fresh one.
"""

import datetime
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@attrs.frozen
class Authority:
    """
    A certificate authority that signs server certificates.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(
        cls, common_name: str = "Rustorium Test CA", issuer: "Authority | None" = None
    ) -> "Authority":
        """
        A root CA, or an intermediate one signed by C{issuer}.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(issuer.certificate.subject if issuer else _name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(issuer.key if issuer else key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self, *hostnames: str, serial: int | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> "ServerCertificate":
        """
        A server certificate for C{hostnames} (C{localhost} when none).
        """
        hostnames = hostnames or ("localhost",)
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(hostnames[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 10 * DAY)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(h) for h in hostnames]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return ServerCertificate(key, certificate)

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@attrs.frozen
class ServerCertificate:
    """
    A server's key and certificate.
    """

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: Path, authority: Authority | None = None) -> "Files":
        """
        Write C{cert.pem}, C{key.pem} and, given the authority, C{chain.pem}
        in C{directory}; existing files are replaced.
        """
        directory.mkdir(parents=True, exist_ok=True)
        files = Files(directory / "cert.pem", directory / "key.pem", directory / "chain.pem")
        files.certificate.write_bytes(self.certificate_pem())
        files.key.write_bytes(self.key_pem())
        if authority is not None:
            files.chain.write_bytes(authority.pem())
        return files


@attrs.frozen
class Files:
    """
    Paths of a written certificate, key and chain.
    """

    certificate: Path
    key: Path
    chain: Path

    def listen(self, port: int | str, *extra: str) -> str:
        """
        A C{wss:} description serving these files.
        """
        return ":".join(
            [f"wss:{port}", f"certificate={self.certificate}", f"privateKey={self.key}",
             *extra]
        )
