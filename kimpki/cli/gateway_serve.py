"""``kimpki gateway serve``: run a local Istio-style ingress gateway (Envoy) from manifests."""

from __future__ import annotations

import click

from kimpki.cli.common import note
from kimpki.errors import UsageError

EPILOG = """\b
Examples:
  kimpki gateway serve -f ./manifests
  kimpki gateway serve -f secret.yaml -f gateway.yaml --port 9443
  curl --resolve kim.example.com:8443:127.0.0.1 --cacert ca.crt https://kim.example.com:8443/health

\b
Reads Secret, Gateway (networking.istio.io) and, optionally, the ingress gateway Deployment
(for extra Secret volume mounts of file-mounted servers); other kinds are ignored. Each Gateway
port becomes one local listener (443 -> --port); servers are told apart by SNI. Every response
has an x-kimpki-gateway: <gateway>/<port name> header; /health answers {"status":"UP"}, other
paths 404. Changed Secrets and Gateways are picked up within a second, without restarting Envoy.
A manifest that cannot be read (bad YAML, too large, an alias bomb) is reported in one line and
the last good configuration keeps being served.

\b
Envoy's admin interface is a Unix socket (0600) in the gateway's private folder, e.g.
  curl --unix-socket /tmp/kimpki-gw-XXXXXXXX/admin.sock http://localhost/ready
Envoy dies with kimpki, even when kimpki is killed (SIGKILL), and sees none of kimpki's
environment (no KIMPKI_CA_PASSPHRASE).
"""


def _port_mapping(port: int, maps: tuple[str, ...]) -> dict[int, int]:
    out = {443: port}
    for m in maps:
        gp, sep, lp = m.partition(":")
        try:
            if not sep:
                raise ValueError
            out[int(gp)] = int(lp)
        except ValueError:
            raise UsageError(f"--map wants GATEWAY_PORT:LOCAL_PORT, not {m!r}") from None
    return out


@click.command("serve", epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-f", "--filename", "--manifests", "paths", multiple=True, required=True, metavar="PATH",
              help="A manifest file or a folder of them (YAML, multi-document). Repeatable; --manifests DIR "
                   "is the same.")
@click.option("--port", type=click.IntRange(0, 65535), default=8443, show_default=True,
              help="Local port for the Gateway's port 443 (0 = any free port).")
@click.option("--map", "maps", multiple=True, metavar="GW:LOCAL",
              help="Map another Gateway port to a local port, e.g. --map 80:8080. Repeatable.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address the listeners bind.")
@click.option("--admin-port", type=click.IntRange(0, 65535), default=None,
              help="Put Envoy's admin interface on this TCP port of 127.0.0.1 (0 = any) instead of a private "
                   "Unix socket. Unauthenticated: every local user can then read the served certificates "
                   "and stop Envoy.")
def command(paths: tuple[str, ...], port: int, maps: tuple[str, ...], address: str, admin_port: int | None) -> None:
    """Serve Gateway servers locally with Envoy until Ctrl-C (SIGINT) or SIGTERM."""
    from kimpki.localgw.runner import LocalGateway

    gw = LocalGateway(paths, address=address, port_map=_port_mapping(port, maps), admin_port=admin_port,
                      log=lambda line: note(f"kimpki: {line}"))

    def ready(gw: LocalGateway) -> None:
        for line in gw.serving_lines():
            click.echo(line)
        note(f"kimpki: ready in {gw.startup_seconds:.2f} s (Envoy pid {gw.pid}, admin {gw.admin_url}); "
             f"watching the manifests; Ctrl-C to stop")

    # Signal handlers go in before Envoy starts: SIGTERM during start-up still stops Envoy.
    signum = gw.serve_forever(on_ready=ready)
    note("kimpki: stopped" + (f" on signal {signum}" if signum else ""))
