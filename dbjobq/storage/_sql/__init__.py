"""The parts of `SQLAlchemyStorage` (private: import the storage, not these).

`schema` defines the tables and types, `engine` makes engines and retries, `rows`
maps jobs to rows and back, `changes` says what each change of state writes,
`leases` sorts out batches of leases, `migrate` upgrades old tables, `notify`
watches for other processes' enqueues, and `dialects` holds what differs between
databases.
"""
