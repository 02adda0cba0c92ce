"""
The fault suite: real nodes, Redis and PostgreSQL, killed, restarted and
cut off while a recorded workload runs, and a checker that proves from the
history that nothing acknowledged was lost and no stream had a silent gap.

- L{tests.faults.hosts}: throwaway Redis and PostgreSQL that a node in
  another network namespace can reach, and that namespace;
- L{tests.faults.cluster}: the nodes, the genesis, keys, and what the test
  reads straight from Redis and PostgreSQL;
- L{tests.faults.workload}: subscribers, senders and readers that record
  every operation in a L{tests.faults.history.History};
- L{tests.faults.checker}: the properties every history must have.

Run it alone with C{pytest -m faults}; C{docs/resilience.rst} has the
figures it measures.
"""
