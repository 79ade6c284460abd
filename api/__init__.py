"""FastAPI service (registry, queries, alerts, webhooks). Not built yet."""
