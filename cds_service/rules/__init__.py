"""Rules as data: ``rules/<area>/<rule-id>.yaml`` with sibling ``<rule-id>.cases.yaml``.

``loader`` reads and validates rule files (JSON Schema + semantic lints), ``expression`` parses the one-line
``condition``, ``criteria`` evaluates criteria blocks over ``PatientFacts`` (three-valued, aware of incomplete
data), ``templates`` renders card text from the evidence, ``engine`` evaluates a rule set into cards (via
``cds_service.rules.cards``), ``records``/``cases`` run the clinician-readable cases through the whole chain, and
``check`` is ``cds-service rules check``.
"""
