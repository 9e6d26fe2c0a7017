"""Redundant servers on etcd (issue 16): the pieces that do not depend on the server yet.

- :mod:`lanlic.cluster.fence`: when a member may still answer (pure; time passed in).
- :mod:`lanlic.cluster.mirror`: which seats are taken, fed by etcd's watch (pure).
- :mod:`lanlic.cluster.etcd`: the seat store on etcd (asyncio, aetcd: ``lanlic[cluster]``).
- :mod:`lanlic.cluster.borrows`: borrows and enrollments as keys in etcd with no etcd lease.
- :mod:`lanlic.cluster.desk`: a member's borrowing desk (the single server's rules, etcd's records).
- :mod:`lanlic.cluster.service`: the licence service of one member.
- :mod:`lanlic.cluster.history`: the cluster's history, every member's batches as etcd keys.

docs/cluster.md has the design, the measurements and what remains.
"""
