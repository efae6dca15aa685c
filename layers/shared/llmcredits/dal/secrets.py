"""Secrets by name: from the environment locally, from SSM Parameter Store in Lambda.

``secret("STRIPE_SECRET_KEY")`` returns $STRIPE_SECRET_KEY when set (local stack, tests);
otherwise, when $STRIPE_SECRET_KEY_PARAM names an SSM parameter, its decrypted value,
cached for five minutes by Powertools Parameters. Values never reach logs.
"""

from __future__ import annotations

import os

CACHE_SECONDS = 300


def secret(name: str) -> str | None:
    value = os.environ.get(name)
    if value:
        return value
    parameter = os.environ.get(f"{name}_PARAM")
    if not parameter:
        return None
    from aws_lambda_powertools.utilities import parameters

    fetched = parameters.get_parameter(parameter, decrypt=True, max_age=CACHE_SECONDS)
    return str(fetched) if fetched else None
