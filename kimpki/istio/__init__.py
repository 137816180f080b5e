"""Istio's credential and gateway contract as pure data transforms (dicts in, dicts out)."""
