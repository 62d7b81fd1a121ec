"""TLS for the relay: server and client contexts, and a self-signed development certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from shared.config import Settings
from shared.lifecycle import StartupError


class TlsConfigError(StartupError):
    """The configured certificate or key cannot be used; the message names the file and says
    why in one line (the relay stops with it, no traceback)."""


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server context, or None when no certificate is configured (TLS listeners off)."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsConfigError("IMSTACK_TLS_CERT and IMSTACK_TLS_KEY must be set together")
    _check_files(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        why = "the key does not belong to it" if "MISMATCH" in str(exc) else str(exc)
        raise TlsConfigError(
            f"cannot use the TLS certificate {cert} (IMSTACK_TLS_CERT) with the key {key} "
            f"(IMSTACK_TLS_KEY): {why}"
        ) from None
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the TLS certificate {cert} or key {key}: {exc}"
        ) from None
    return context


def _check_files(cert: Path, key: Path) -> None:
    """Each file readable and in PEM form, so that the error names the file at fault (OpenSSL's
    own errors, such as ``[SSL] PEM lib``, name neither)."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(cert, "certificate", "IMSTACK_TLS_CERT")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(
            f"the TLS certificate {cert} (IMSTACK_TLS_CERT) is not a PEM certificate"
        ) from None
    data = _read(key, "key", "IMSTACK_TLS_KEY")
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted
        raise TlsConfigError(
            f"the TLS key {key} (IMSTACK_TLS_KEY) is encrypted; the relay needs it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(
            f"the TLS key {key} (IMSTACK_TLS_KEY) is not a PEM private key"
        ) from None


def _read(path: Path, what: str, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read the TLS {what} {path} ({variable}): {exc.strerror or exc}"
        ) from None


def client_context(settings: Settings) -> ssl.SSLContext:
    """For connections this relay opens to msrps:// relays and endpoints."""
    context = ssl.create_default_context()
    if not settings.msrp_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def write_selfsigned(cert_path: Path, key_path: Path, hosts: list[str], days: int = 365) -> None:
    """Write a self-signed certificate for ``hosts`` (names or addresses): development only."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
