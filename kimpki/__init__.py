"""kimpki: a PKI and certificate manager for Istio ingress gateways."""

__version__ = "0.1.0"
