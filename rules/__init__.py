"""The shipped rule set, installed as the package ``cds_service.ruleset`` (data only)."""
