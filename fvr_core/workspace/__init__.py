"""A user's data sets in the dashboard: uploads (kept apart per session in demo mode, pruned) and
the data sets offered and remembered (datasources). Imports runs, config, data and the bottom modules."""
