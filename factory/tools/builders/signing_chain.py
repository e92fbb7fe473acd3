"""A throwaway C2PA certificate chain for tests and benchmarks: a root CA and an ES256 signing certificate with the
extensions the C2PA trust model asks for (leaf not a CA, digitalSignature key usage, emailProtection extended key
usage, key identifiers). Files a C2PA validator will only trust when given the root as a trust anchor: never use
them for real images (docs/review.md says how to get a real certificate)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class SigningChain:
    chain: Path  # signing certificate, then the root (PEM): provenance.c2pa_cert
    key: Path  # the signing key (PEM, PKCS#8): provenance.c2pa_key
    root: Path  # the root alone: the trust anchor for `adfactory provenance verify --trust-anchors`


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "adfactory test")]
    )


def _usage(signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


def make_signing_chain(directory: Path) -> SigningChain:
    """Write root.pem, chain.pem and signer.key into `directory` (valid from yesterday for ten years)."""
    directory.mkdir(parents=True, exist_ok=True)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    root = (
        builder("adfactory test root", _name("adfactory test root"), root_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(signing=False), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        builder("adfactory test signer", root.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signing=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca = SigningChain(directory / "chain.pem", directory / "signer.key", directory / "root.pem")
    ca.root.write_bytes(root.public_bytes(pem))
    ca.chain.write_bytes(leaf.public_bytes(pem) + root.public_bytes(pem))
    ca.key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    ca.key.chmod(0o600)
    return ca
