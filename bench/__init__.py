"""twinline's benchmark harness: capacity, takeover time and memory, beside its peers.

Run it with ``./dev bench`` (installs what it needs first) or ``python -m bench``
from the repository root; ``--quick`` gives a run of a few minutes that exercises
every part. The modules, in the order a run uses them:

- ``profile``: the two modes (full, quick) and every number that shapes a run
- ``elements``: how to start and stop each element under test (twinline with and
  without redundancy, Sippy B2BUA, Kamailio, SIPp calling SIPp directly)
- ``load``: SIPp runs, and reading their statistics, response times and errors
- ``capacity``: one step at one call rate, and the search for the highest clean rate
- ``takeover``: kill -9 of an application server with N established calls
- ``memory``: memory per established call, all processes together
- ``report``: docs/benchmarks.md and its PNG plots, from the results file
"""
