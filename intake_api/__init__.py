"""The FastAPI intake service: REST API, OpenAPI docs, health, metrics and the operator UI."""
