"""`python -m backend` for the browser tests, its runs trained by warm workers.

    SPARSESCOPE_TEST_FORKS=PATH python -m tests.browser.warm_server --port P --data-dir D

The same server, started the same way (backend/__main__.py runs with these arguments), except
that its workers are forked from the test process's helper, which imported torch once
(tests/warm_workers.py), instead of each importing it anew: the browser tests start some
thirty runs, each seconds of CPU before its first step. The helper kills a server's forks
when that server goes, as its own workers would die with it. What a worker process is (a
direct child, its own start-up) is tested where it matters, against `python -m backend`
itself: tests/backend/test_recovery.py, test_worker_pool.py and the `real_workers` tests.
"""

import runpy

from backend.worker_pool import WorkerPool
from tests.warm_workers import forked_start

WorkerPool._start = forked_start
runpy.run_module("backend", run_name="__main__", alter_sys=True)
