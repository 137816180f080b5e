"""Records the command line of every kimpki run the test suite makes (see tests/option_coverage.py)."""
