"""The parts of `SQLAlchemyStorage` (private: import the storage, not these).

`schema` defines the tables, `engine` makes engines and retries, `rows` maps jobs
to rows and back, `migrate` upgrades old tables, `notify` watches for other
processes' enqueues, and `dialects` holds what differs between databases.
"""
