"""kimpki.verify: prove a gateway's SIMPLE or MUTUAL TLS with real handshakes (Python ``ssl``).

    from kimpki.verify import make_target, check_endpoint
    report = check_endpoint(make_target("kim.example.com", connect="127.0.0.1:8443",
                                        ca_file="example.com.crt"))
    report.ok, report.reason, report.message, report.to_dict()

No click, no kubernetes: ``kimpki.cli.verify`` renders reports, the store supplies files.
"""

from kimpki.verify.handshake import ALERT_WAIT, BadInput, ContextCache, check_endpoint, check_many, make_context
from kimpki.verify.report import Check, Reason, Report, ServedCert
from kimpki.verify.retry import until_passed
from kimpki.verify.target import DEFAULT_PORT, DEFAULT_TIMEOUT, Mode, Target, make_target, split_host_port

__all__ = [
    "ALERT_WAIT", "BadInput", "Check", "ContextCache", "DEFAULT_PORT", "DEFAULT_TIMEOUT", "Mode", "Reason",
    "Report", "ServedCert", "Target", "check_endpoint", "check_many", "make_context", "make_target",
    "split_host_port", "until_passed",
]
