"""A stand-in Kubernetes API server for the test suite (see README.md)."""

from .server import DenyHandle, FaultHandle, KubeApiServer, Request

__all__ = ["KubeApiServer", "FaultHandle", "DenyHandle", "Request"]
