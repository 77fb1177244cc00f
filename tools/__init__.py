"""Tooling around the product, never run by a worker: ``make demo``, ``make bench``, the local ``dag.test()``
runner and the sample CRM export generator. Deployments ship ``dags/``, ``include/`` and ``plugins/`` only."""
