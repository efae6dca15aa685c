"""Units that are not money.

Durations and clock readings are binary floats (``time.time()``, socket timeouts);
naming them ``Seconds`` keeps them apart from money, which is always ``Decimal``.
"""

from typing import TypeAlias

Seconds: TypeAlias = float
