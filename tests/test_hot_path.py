"""What a run costs the server beyond its work: here, modules looked for on every run.

Python does not remember an import that failed: `import x` of a missing `x` searches
every entry of `sys.path` again, a `stat` each. httpcore 1.0, the `http` block's client
until aiohttp, imported `sniffio` that way on every lock and event it set up (encode/
httpcore discussion #1102), and once anyio stopped bringing `sniffio` along that search
was 9 % of the server's CPU under scenario 2's load (bench/RESULTS.md). This test finds
any regression like it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

from tests.conftest import Api
from tests.runs import count_workflow, echo_n
from tests.upstream import Upstream


class Lookups:
    """A finder first on `sys.meta_path` that finds nothing and counts what it is asked."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        self.names[name] += 1
        return None


def test_runs_with_an_http_block_look_for_no_module_again(api: Api, upstream: Upstream) -> None:
    upstream.route("/count", echo_n)
    user_id, workflow_id = api.install(count_workflow(upstream))
    for n in range(2):  # what a first run imports lazily is imported by now
        api.wait_for(workflow_id, api.run(user_id, workflow_id, {"n": n}))

    lookups = Lookups()
    sys.meta_path.insert(0, lookups)
    try:
        for n in range(5):
            log = api.wait_for(workflow_id, api.run(user_id, workflow_id, {"n": n}))
            assert log["status"] == "succeeded", log
    finally:
        sys.meta_path.remove(lookups)

    again = {name: times for name, times in lookups.names.items() if times > 1}
    assert not again, f"modules looked for on every run: {again}"
