# Python imports this at start-up in every interpreter the test suite starts: tests/option_coverage.py
# puts this folder on PYTHONPATH for the session. It only arranges for kimpki's command lines to be
# logged; with the log variable unset (any run outside the suite) it does nothing.
import os

if os.environ.get("PYTEST_KIMPKI_OPTION_LOG"):
    import kimpki_option_log

    kimpki_option_log.patch_click_when_imported()
