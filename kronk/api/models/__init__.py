"""Models: the served ones, pulls (jobs that outlive their client), removal, catalog, the store."""
