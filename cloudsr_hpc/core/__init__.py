"""General helpers below every domain layer: files written atomically and checksummed, process
resources, stage timing, normalisation maths, figure files, the GPU a rank
drives.  Imports nothing of the package but
:mod:`cloudsr_hpc.errors` (the layering is checked by ``lint-imports``; see docs/architecture.md)."""
