"""Test helpers for the local gateway: certificates made with the real ``openssl`` CLI, and Secret
manifests written exactly as ``kubectl create secret ... --dry-run=client -o yaml`` writes them."""

from __future__ import annotations

import base64
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


def openssl(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {r.stderr.strip()}")
    return r.stdout


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number


def make_ca(directory: Path, name: str, org: str = "example Inc.") -> Pair:
    """A root CA with proper v3 extensions (EC P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-subj", f"/O={org}/CN={name}", "-days", "3",
            "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-addext", "subjectKeyIdentifier=hash")
    return Pair(cert, key)


def make_leaf(directory: Path, ca: Pair, host: str, *, client: bool = False, tag: str = "") -> Pair:
    """A server (or client) certificate for ``host`` signed by ``ca``, with a random serial."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{host}{tag}"
    cert, key, csr, ext = (directory / f"{stem}.crt", directory / f"{stem}.key",
                           directory / f"{stem}.csr", directory / f"{stem}.ext")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/O=kim organization/CN={host}")
    ext.write_text(
        f"subjectAltName=DNS:{host}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={'clientAuth' if client else 'serverAuth'}\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
            "-set_serial", hex(secrets.randbits(120) | 1 << 120), "-days", "2", "-sha256",
            "-extfile", str(ext), "-out", str(cert))
    return Pair(cert, key)


def b64(path: Path) -> str:
    """A file's content as base64, the way Secret ``data`` holds it."""
    return base64.b64encode(Path(path).read_bytes()).decode()


def generic_secret_yaml(name: str, files: dict[str, Path], namespace: str | None = None) -> str:
    """``kubectl create secret generic NAME --from-file=KEY=PATH ... --dry-run=client -o yaml``."""
    lines = ["apiVersion: v1", "data:"]
    lines += [f"  {k}: {b64(files[k])}" for k in sorted(files)]
    lines += ["kind: Secret", "metadata:", "  creationTimestamp: null", f"  name: {name}"]
    if namespace:
        lines.append(f"  namespace: {namespace}")
    return "\n".join(lines) + "\n"


def tls_secret_yaml(name: str, pair: Pair, namespace: str | None = None) -> str:
    """``kubectl create secret tls NAME --cert=... --key=... --dry-run=client -o yaml``."""
    lines = ["apiVersion: v1", "data:", f"  tls.crt: {b64(pair.cert)}", f"  tls.key: {b64(pair.key)}",
             "kind: Secret", "metadata:", "  creationTimestamp: null", f"  name: {name}"]
    if namespace:
        lines.append(f"  namespace: {namespace}")
    lines.append("type: kubernetes.io/tls")
    return "\n".join(lines) + "\n"


def gateway_yaml(name: str, servers: list[dict], namespace: str | None = "istio-system") -> str:
    """An Istio ``networking.istio.io/v1`` Gateway for the default ingress gateway."""
    import yaml

    meta = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    doc = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": meta,
           "spec": {"selector": {"istio": "ingressgateway"}, "servers": servers}}
    return yaml.safe_dump(doc, sort_keys=False)


def https_server(host: str, port_name: str, mode: str = "SIMPLE", credential: str | None = None,
                 number: int = 443, **tls) -> dict:
    t = {"mode": mode}
    if credential:
        t["credentialName"] = credential
    t.update(tls)
    return {"port": {"number": number, "name": port_name, "protocol": "HTTPS"}, "tls": t, "hosts": [host]}


def deployment_with_secret_volume(secret_name: str, mount_path: str, volume_name: str,
                                  namespace: str = "istio-system") -> str:
    """The istio-ingressgateway Deployment with one more Secret volume in ``istio-proxy``."""
    import yaml

    doc = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istio-ingressgateway", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"istio": "ingressgateway"}},
            "template": {
                "metadata": {"labels": {"istio": "ingressgateway"}},
                "spec": {
                    "containers": [{
                        "name": "istio-proxy", "image": "docker.io/istio/proxyv2:1.32.0",
                        "volumeMounts": [{"name": volume_name, "mountPath": mount_path, "readOnly": True}],
                    }],
                    "volumes": [{"name": volume_name, "secret": {"secretName": secret_name, "optional": True}}],
                },
            },
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)
