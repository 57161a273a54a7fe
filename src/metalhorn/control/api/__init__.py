"""The manager's REST API (FastAPI): records intent, answers with records; controllers do the work.

- app.py:      create_app(context): routes, auth, body limit, OpenAPI (/openapi.json, /docs).
- context.py:  what routes need (store, clock, token, wake-up callback, metrics) -- built by the daemon.
- auth.py:     the bearer token: generated at first start, stored 0600; checked on every /v1 and /metrics call.
- problems.py: the one mapping of the error tree to HTTP (RFC 9457 problem+json with `code` and `field`).
- limits.py:   bodies over 1 MiB -> 413 before any parsing.
- models.py:   request bodies (pydantic), validated once at the edge with the offending field named.
- volumes.py, nodes.py, agents.py: the routes.
"""
