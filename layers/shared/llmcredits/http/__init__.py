"""HTTP plumbing shared by the thin handlers: resolver, auth, errors, observability."""
