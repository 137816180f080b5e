"""The pure PKI core: names, keys, certificate profiles, parsing, chains, renewal time.

No files, no network, no click, no kubernetes: values in, values out.
"""
