"""Pure domain: pricing, ledger rules and routing. No boto3 here."""
