"""The browser test runs only through `make test-browser`, never in `make test`.

It needs Chromium and a running JupyterLab and takes a minute or more, so `make test`
(pytest's testpaths include tests/) does not collect anything in this folder.
`make test-browser` sets GLASSBOX_BROWSER_TESTS=1 and runs `pytest tests/browser`.
Running `pytest tests/browser` without it collects nothing, and pytest says so
("no tests ran", exit code 5): nothing is skipped silently.
"""

import os

collect_ignore_glob = [] if os.environ.get("GLASSBOX_BROWSER_TESTS") == "1" else ["test_*.py"]
