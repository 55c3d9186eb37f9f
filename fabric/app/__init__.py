"""The composition root: opens what a process needs and assembles the process for a role.

Only the entry points (the CLI, the demo, benchmarks and tests) import this package;
nothing below it does. `parts` opens the stores, secrets, KMS and token verifier from
the settings; `gateway` assembles a gateway (engine, platform, purge path); `bus` connects
NATS and the event log; `processes` builds `fabric serve --role all|platform|runtime`.
"""
