"""Wire shapes of accounts and ledger entries: money as 6-place decimal strings."""

from __future__ import annotations

from typing import Any

from llmcredits.domain.ledger import Account, LedgerEntry, Lot
from llmcredits.money import format_money


def lot_view(lot: Lot) -> dict[str, Any]:
    return {
        "amount": format_money(lot.amount),
        "remaining": format_money(lot.remaining),
        "source": lot.source.value,
        "expires_at": lot.expires_at,
    }


def account_view(account: Account) -> dict[str, Any]:
    return {
        "user_id": account.user_id,
        "balance": format_money(account.balance),
        "held": format_money(account.held),
        "available": format_money(account.available),
        "tier": account.tier.value,
        "monthly_cap": None if account.monthly_cap is None else format_money(account.monthly_cap),
        "month": account.month,
        "month_spent": format_money(account.month_spent),
        "created_at": account.created_at,
        "lots": [lot_view(lot) for lot in account.current_lots],
    }


def entry_view(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "created_at": entry.created_at,
        "type": entry.type.value,
        "amount": format_money(entry.amount),
        "balance_after": None if entry.balance_after is None else format_money(entry.balance_after),
        "provider": entry.provider,
        "model": entry.model,
        "tokens": entry.tokens,
        "cost": None if entry.cost is None else format_money(entry.cost),
        "key_id": entry.key_id,
        "receipt_url": entry.receipt_url,
        "metadata": entry.metadata,
    }
