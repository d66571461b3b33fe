"""hostd at the process's descriptor limit: new clients are refused at
accept and logged once, hostd does not spin, and it serves again once
descriptors free up (the scenario is test_admission_limits.py's).

In a file of its own so that the ASan phase can leave it out (label
not_under_asan). UBSan's vptr check cannot run at a descriptor limit: on a
type-cache miss it proves the vtable readable by writing it into a pipe(2),
and with no descriptor free for that pipe it reports "object has invalid
vptr" for a sound object and stops the process (halt_on_error). A ten-line
program with RLIMIT_NOFILE at 3 shows the same report. The ci build runs
this test with no sanitizer in the way.
"""

import test_admission_limits as limits


def test_at_the_descriptor_limit_new_clients_are_refused_once_logged_without_spinning():
    limits.descriptor_limit_is_met_cleanly()
