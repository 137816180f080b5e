"""The local home: layout, atomic 0600 writes, the inventory, locks."""

from kimpki.store.store import CaRecord, CertRecord, Store, default_home

__all__ = ["Store", "CaRecord", "CertRecord", "default_home"]
