"""Use cases: orchestrate the pure domain over storage ports."""
