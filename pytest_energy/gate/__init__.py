"""The regression gate: is this run's energy worse than before, beyond tolerance and noise?

Modules, imported one way (each only imports those above it):

- ``rules``: pure statistics, no I/O: the exact rule of ``counted`` meters and the session rules
  of noisy ones (a new session against a history of sessions; A/B pairs).
- ``profiles``: which meter on which hardware a baseline belongs to.
- ``compare``: two sets of test records in, one comparison model out (read by every report).
- ``store``: baseline files and their session histories: load strictly, merge, trim, save.
- ``plugin``: the gate inside a pytest run (options, compare, save, exit status).
- ``cli`` and ``ab``: the ``pytest-energy compare`` and ``pytest-energy ab`` commands.

scipy is imported only when a noisy rule runs.
"""
