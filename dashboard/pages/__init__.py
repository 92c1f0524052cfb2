"""Per-page data loaders of the dashboard (one module per page; shared readers: dashboard.data)."""
