"""The revisions, one file each, named by their revision id (``0001_initial.py``, ``0002_...``)."""
