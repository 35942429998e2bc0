"""The operator's tools for a deployed relay: the `batch-relay` command, its cost estimate and reports.

Nothing here imports moto, the emulator or `relay_local`: it runs against real AWS (or any endpoint
the AWS SDK is pointed at)."""
