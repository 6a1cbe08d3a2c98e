"""The database schema's history, in Alembic's layout: ``env.py``, the revision template and ``versions/``.

Alembic loads these files itself (cds_service.storage.schema points it here); nothing imports them.
"""
