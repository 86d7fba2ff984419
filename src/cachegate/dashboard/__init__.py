"""The operator's dashboard under ``/admin`` (SPEC §13): usage, cache and spend, as HTML pages.

Its routes (``pages.Dashboard.routes``) are served by the admin application (``admin_api/app.py``),
beside the admin API, behind a login of their own (``session.py``).
"""
