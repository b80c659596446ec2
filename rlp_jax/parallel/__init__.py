"""Device mesh, logical-axis rules and shardings."""
