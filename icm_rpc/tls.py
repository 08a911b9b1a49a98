"""TLS material for the services: loading PEM files into gRPC credentials, and a small
certificate authority (``icm certs``) so that a deployment or a test gets working mutual TLS in
one command.

Identity rule: an edge's client certificate names its camera id as Common Name (and as a DNS
subject alternative name); the cloud refuses a stream whose Hello claims any other camera id.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TLSFiles", "certificate_name", "client_credentials", "make_ca", "make_cert",
           "peer_identities", "server_credentials"]


@dataclass(frozen=True)
class TLSFiles:
    """PEM paths. ``ca`` verifies the peer; ``cert``/``key`` identify this side."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    def read(self, which: str) -> bytes | None:
        path = getattr(self, which)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read TLS {which} file {path}: {e}") from e


def server_credentials(files: TLSFiles, require_client_cert: bool) -> grpc.ServerCredentials:
    if files.cert is None or files.key is None:
        raise ValueError("a TLS server needs --tls-cert and --tls-key")
    if require_client_cert and files.ca is None:
        raise ValueError("mutual TLS needs --tls-ca (the CA that signs edge certificates)")
    return grpc.ssl_server_credentials(
        [(files.read("key"), files.read("cert"))], root_certificates=files.read("ca"),
        require_client_auth=require_client_cert)


def client_credentials(files: TLSFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=files.read("ca"),
                                        private_key=files.read("key"),
                                        certificate_chain=files.read("cert"))


def peer_identities(context: grpc.ServicerContext) -> set[str]:
    """Common name and DNS names of the verified client certificate (empty without mTLS)."""
    auth = context.auth_context()
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for v in auth.get(key, ()):
            names.add(v.decode() if isinstance(v, bytes) else str(v))
    return names


def certificate_name(cert_path: str | Path) -> str:
    """First DNS name (else the Common Name) of a PEM certificate: the name peers that share
    one certificate expect from each other."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if names:
        return str(names[0])
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cn[0].value) if cn else ""


# -- a small CA ------------------------------------------------------------------------------
def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(out_dir: str | Path, name: str = "icm dev CA", days: int = 3650) -> tuple[Path, Path]:
    """Write ``ca.pem`` and ``ca.key``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    out = Path(out_dir)
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(key), private=True)
    return out / "ca.pem", out / "ca.key"


def make_cert(ca_dir: str | Path, name: str, out_dir: str | Path | None = None, *,
              server: bool = False, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
              days: int = 825) -> tuple[Path, Path]:
    """Sign ``<name>.pem``/``<name>.key`` with the CA in ``ca_dir``.

    A client (edge) certificate's CN and DNS name are ``name`` (the camera id); a server
    certificate also names ``hosts``.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir = Path(ca_dir)
    out = Path(out_dir) if out_dir else ca_dir
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        raise ValueError(f"no usable CA in {ca_dir} (make one with `icm certs ca`): {e}") from e
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if server:
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / f"{name}.key", _pem_key(key), private=True)
    return out / f"{name}.pem", out / f"{name}.key"
