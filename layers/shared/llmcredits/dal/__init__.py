"""AWS adapters. Only this package (and handlers' wiring) imports boto3."""
