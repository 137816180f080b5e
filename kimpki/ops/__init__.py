"""Use cases: each function takes a Store and plain values, calls pki/ and the other wings, returns plain values."""
