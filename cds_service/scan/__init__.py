"""The population scan (``cds-service scan``): the hook's rules over a Bulk FHIR export, grouped by patient on Dask.

source.py finds the NDJSON files (export.py downloads them from a FHIR server, smart.py gets its access tokens);
lines.py reads one block of one file; routing.py puts a resource under the prefetch keys that would hold it;
hooks.py says which hooks a population can answer and what context each needs; patients.py answers one patient's
hook call; pipeline.py is the Dask graph; tally.py adds up the results; output.py writes the files atomically;
report.py renders report.html.
"""
