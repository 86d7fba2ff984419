"""The admin HTTP API (SPEC §13): ``/admin/v1/…``, its OpenAPI schema at ``/admin/openapi.json``.

A FastAPI application, apart from the gateway's plain-ASGI hot path: the gateway hands it every
path under ``/admin`` and nothing else. Each resource group is a module with one ``router``; each
route calls the operation of ``cachegate.operations`` the CLI calls too. ``app.build_admin_app``
wires it; ``auth.require_admin`` is the dependency every route is behind.
"""
