"""The service over HTTP: app wiring, control API, guard, auth, WebSocket, OpenAPI.

Entry point: app.create_app.
"""
