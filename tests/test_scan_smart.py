"""``cds-service scan`` from a FHIR server with SMART Backend Services: the token endpoint found in the server's
smart-configuration, a client assertion signed with the client's private key (RS384 or ES384) and verified by
the project's FHIR test server against the registered JWKS, scopes for exactly the types the scan reads, a token
renewed when it expires during the export; and each way it can go wrong ends in one line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support.bulk import NOW, fixture_resources, run_scan

from cds_service.scan.export import TOKEN_ENV, download_export
from cds_service.scan.smart import CLIENT_ID_ENV, KEY_FILE_ENV, KEY_ID_ENV, SmartTokens, smart_client

pytestmark = [pytest.mark.fhir, pytest.mark.slow, pytest.mark.timeout(600)]
CLIENT = "population-scan"
KID = "scan-key-1"
TOKEN_PATH = "/auth/token"
PREFIX = "cds-service scan: the export failed, nothing was scanned: "
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def pem(key: Key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def jwks(key: Key, kid: str = KID) -> dict[str, Any]:
    """The JWKS a client registers: its public key, with the kid its assertions name."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": kid}]}


def smart_env(key_file: Path) -> dict[str, str]:
    return {CLIENT_ID_ENV: CLIENT, KEY_FILE_ENV: str(key_file), KEY_ID_ENV: KID}


def token_requests(calls: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
    return [parse_qs(c["form"]) for c in calls if c["url"] == TOKEN_PATH]


def visits() -> list[dict[str, Any]]:
    """One finished visit for each fixture patient."""
    return [{"resourceType": "Encounter", "id": f"{r['id']}-visit", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "subject": {"reference": f"Patient/{r['id']}"}, "period": {"start": "2026-10-20T09:00:00Z"}}
            for r in fixture_resources() if r["resourceType"] == "Patient"]


def test_a_smart_backend_client_exports_with_renewed_tokens_and_scans(fhir_server, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = pem(key, tmp_path / "scan-key.pem")
    fhir_server.load(fixture_resources() + visits())
    fhir_server.smart({CLIENT: jwks(key)}, expires_in=2)  # shorter than the export's polling: renewed on the way
    out = tmp_path / "out"
    result = run_scan(fhir_server.base_url, "--out", str(out), "--now", NOW, "--workers", "1", "--hook",
                      "encounter-start", "--smart-client-id", CLIENT, "--smart-key-file", str(key_file),
                      "--smart-key-id", KID)
    assert result.returncode == 0, result.stderr
    calls = fhir_server.requests()
    tokens = token_requests(calls)
    assert len(tokens) >= 2
    types = ["Condition", "Encounter", "Medication", "MedicationRequest", "MedicationStatement", "Observation",
             "Patient"]
    assert {t["scope"][0] for t in tokens} == {" ".join(f"system/{t}.read" for t in types)}
    assert all(t["grant_type"] == ["client_credentials"] for t in tokens)
    fhir_calls = [c for c in calls if c["url"] != TOKEN_PATH]
    assert fhir_calls and all(c["authorized"] for c in fhir_calls)
    kick_off = next(c for c in fhir_calls if "$export" in c["url"])
    assert parse_qs(urlsplit(kick_off["url"]).query)["_type"] == [",".join(types)]
    rows = [json.loads(line) for line in (out / "worklist.ndjson").read_text().splitlines()]
    assert len(rows) > 30 and all(r["encounter"] == f"{r['patient']}-visit" for r in rows)
    key_text = key_file.read_text()
    written = result.stderr + "".join(p.read_text() for p in out.iterdir() if p.is_file())
    assert "PRIVATE KEY" not in written and key_text not in written


def test_an_es384_client_asks_v2_scopes_of_a_v2_server(fhir_server, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    fhir_server.load([r for r in fixture_resources() if r["resourceType"] in ("Patient", "Condition")])
    fhir_server.smart({CLIENT: jwks(key)}, permission="v2")
    client = smart_client(CLIENT, str(pem(key, tmp_path / "ec.pem")), KID, environ={})
    assert client is not None and client.algorithm == "ES384"
    folder = download_export(fhir_server.base_url, tmp_path / "export", ["Patient", "Condition"],
                             bearer=SmartTokens(client, fhir_server.base_url, ["Patient", "Condition"]))
    assert [t["scope"] for t in token_requests(fhir_server.requests())] == [["system/Condition.rs system/Patient.rs"]]
    assert sorted(p.name for p in folder.iterdir()) == ["Condition-1.ndjson", "Patient-2.ndjson", "manifest.json"]
    assert (folder / "Patient-2.ndjson").read_text().count("\n") == sum(
        r["resourceType"] == "Patient" for r in fixture_resources())


def test_a_refused_token_request_is_one_line(fhir_server, tmp_path: Path) -> None:
    registered, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    fhir_server.smart({CLIENT: jwks(registered)})
    key_file = pem(other, tmp_path / "not-the-registered-key.pem")  # same kid, another key
    result = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"), env=smart_env(key_file))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{PREFIX}the token endpoint refused the client (401): invalid_client: "
                                     "the client assertion signature does not verify")
    assert [c["url"] for c in fhir_server.requests()] == [TOKEN_PATH]


@pytest.mark.parametrize(("configure", "reason"), [
    (lambda server: server.smart({}, token_endpoint=False),
     "/.well-known/smart-configuration names no token_endpoint (an http or https URL): SMART Backend Services "
     "cannot get a token"),
    (lambda server: None,
     "/.well-known/smart-configuration was answered 404: the server publishes no SMART configuration to find "
     "its token endpoint in"),
], ids=["no-token-endpoint", "no-smart-configuration"])
def test_a_server_without_a_token_endpoint_is_one_line(fhir_server, tmp_path: Path, configure, reason) -> None:
    configure(fhir_server)
    key_file = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048), tmp_path / "key.pem")
    result = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"), env=smart_env(key_file))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{PREFIX}{fhir_server.base_url}{reason}"


def key_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Key files the scan cannot sign with, and the line it must say about each."""
    (tmp / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    p256 = pem(ec.generate_private_key(ec.SECP256R1()), tmp / "p256.pem")
    small = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024), tmp / "rsa1024.pem")
    return {
        "missing": (tmp / "absent.pem", f"the SMART key file {tmp / 'absent.pem'} cannot be read: "
                                        "No such file or directory"),
        "not-a-key": (tmp / "cert.pem", f"the SMART key file {tmp / 'cert.pem'} is not an unencrypted PEM private "
                                        "key"),
        "p-256": (p256, f"the SMART key in {p256} is EC on secp256r1; ES384 needs P-384 (secp384r1)"),
        "rsa-1024": (small, f"the SMART key in {small} is RSA of 1024 bits; at least 2048"),
    }


@pytest.mark.parametrize("case", ["missing", "not-a-key", "p-256", "rsa-1024"])
def test_a_bad_key_file_is_one_line_before_anything_is_asked(fhir_server, tmp_path: Path, case: str) -> None:
    key_file, line = key_files(tmp_path)[case]
    result = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"), env=smart_env(key_file))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cds-service scan: {line}"
    assert fhir_server.requests() == []


def test_half_a_smart_client_or_two_ways_to_authorize_is_one_line(fhir_server, tmp_path: Path) -> None:
    key_file = pem(ec.generate_private_key(ec.SECP384R1()), tmp_path / "key.pem")
    half = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"), "--smart-key-file", str(key_file))
    assert half.returncode == 2
    assert half.stderr.strip() == (
        "cds-service scan: SMART Backend Services needs --smart-client-id, --smart-key-id too (or "
        "CDS_SCAN_SMART_CLIENT_ID, CDS_SCAN_SMART_KEY_FILE, CDS_SCAN_SMART_KEY_ID)")
    both = run_scan(fhir_server.base_url, "--out", str(tmp_path / "out"),
                    env={**smart_env(key_file), TOKEN_ENV: "a-static-token"})
    assert both.returncode == 2
    assert both.stderr.strip() == (f"cds-service scan: both {TOKEN_ENV} and a SMART client are given: use one way "
                                   "to authorize")
    assert fhir_server.requests() == []
