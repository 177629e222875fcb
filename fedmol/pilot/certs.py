"""Certificates and keys for a pilot (with the ``cryptography`` package).

:func:`make_certs` writes, into one folder:

* ``ca.pem`` / ``ca.key`` -- the pilot's certificate authority (EC P-384, self-signed). ``ca.pem``
  goes to every site (``--root-certificates``); ``ca.key`` stays with whoever issues certificates
  (ideally offline).
* ``server.pem`` / ``server.key`` -- the SuperLink's TLS certificate (EC P-256), signed by the CA,
  with subject alternative names for each of ``hosts`` (IP addresses and DNS names; by default
  127.0.0.1 and localhost, add the coordinator's public name for a real pilot).
* ``partner-<k>/`` -- the folder to hand to partner k (``fedmol pilot partner --certs``):
  ``ca.pem``, ``node.key`` / ``node.key.pub`` (its SuperNode authentication key pair, EC P-384,
  OpenSSH format, ``--auth-supernode-private-key``) and ``partner.json`` (its partition id).
* ``partner-keys/partner-<k>.pub`` -- the partners' public keys, which ``fedmol pilot
  coordinator`` registers at the SuperLink (``flwr supernode register``). A site may instead make
  its own key pair (``ssh-keygen -t ecdsa -b 384``) and send only the ``.pub`` file: it goes into
  ``partner-keys/``.

The server certificate always also names 127.0.0.1 and localhost (the coordinator's own ``flwr``
CLI and ServerApp connect through them). Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmol.errors import FedmolError
from fedmol.jsonio import write_json

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
NODE_KEY = "node.key"          # a partner's private key, in its folder
PARTNER_KEYS = "partner-keys"  # the coordinator's folder of the partners' public keys


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmol pilot"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts) -> x509.SubjectAlternativeName:
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_node_key(path: str | Path) -> tuple[Path, Path]:
    """One SuperNode key pair (EC P-384, OpenSSH): ``path`` (private) and ``path.pub``."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                   serialization.PublicFormat.OpenSSH) + b"\n")
    return path, pub


def make_certs(out: str | Path, partners: int = 0, hosts=DEFAULT_HOSTS, days: int = 365) -> dict:
    """Write a CA, the SuperLink's server certificate and ``partners`` node key pairs to ``out``."""
    if partners < 0:
        raise FedmolError("partners must be >= 0")
    hosts = tuple(dict.fromkeys([*hosts, *DEFAULT_HOSTS]))  # the first one is the certificate's name
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedmol pilot CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA384()))
    _write_private(out / "ca.key", _pem_key(ca_key))
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name)
           .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now).not_valid_after(until)
           .add_extension(_san(hosts), critical=False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                        content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                        crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
           .sign(ca_key, hashes.SHA256()))
    _write_private(out / "server.key", _pem_key(srv_key))
    (out / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))

    keys = [make_partner_bundle(out, k) for k in range(partners)]
    return dict(ca=out / "ca.pem", ca_key=out / "ca.key", server_cert=out / "server.pem", server_key=out / "server.key",
                hosts=list(hosts), partner_keys=[k for k, _ in keys], partner_pubs=[p for _, p in keys])


def make_partner_bundle(out: str | Path, k: int) -> tuple[Path, Path]:
    """Partner k's folder ``out/partner-<k>/`` (``ca.pem``, ``node.key`` + ``.pub``, ``partner.json``)
    and its public key in ``out/partner-keys/``; returns (private key, registered public key)."""
    out = Path(out)
    folder = out / f"partner-{k}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes((out / "ca.pem").read_bytes())
    key, pub = make_node_key(folder / NODE_KEY)
    write_json(folder / "partner.json", {"partition_id": k}, indent=None)
    registered = out / PARTNER_KEYS / f"partner-{k}.pub"
    registered.parent.mkdir(parents=True, exist_ok=True)
    registered.write_bytes(pub.read_bytes())
    return key, registered
