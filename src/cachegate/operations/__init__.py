"""Every administrative operation, once: the ``cachegate`` CLI (``admin.py``) and the admin HTTP API
(``admin_api/``) both call these (SPEC §13), so the two cannot drift apart in what they accept,
refuse or change.

Each operation is an async function of a ``ControlStore`` (and the ``Config`` where a name must be
one the configuration defines) returning plain values; it resolves names (a principal's name or
id) and checks its arguments before the store is touched. Errors: ``InvalidArgument`` (the
caller's mistake, naming the argument), the store's ``NotFound``, ``Conflict`` and
``StoreUnavailable``. How each is shown (a line on stderr, a JSON error) is the caller's business.
"""

from cachegate.operations.access import (
    CreatedKey,
    KeyView,
    create_key,
    create_principal,
    get_key,
    get_principal,
    list_keys,
    list_principals,
    revoke_key,
)
from cachegate.operations.catalog import (
    ModelView,
    disable_tariff,
    get_endpoint,
    get_model,
    list_endpoints,
    list_models,
    list_tariffs,
    model_fits,
    put_endpoint,
    put_model,
    set_tariff,
    tariff_state,
    upstream_key_state,
)
from cachegate.operations.checks import InvalidArgument
from cachegate.operations.limits import (
    BudgetView,
    delete_budget,
    delete_rate_limit,
    get_rate_limit,
    list_budgets,
    list_rate_limits,
    set_budget,
    set_rate_limit,
)
from cachegate.operations.usage import UsageFormat, UsageParameters, UsageReport, usage

__all__ = [
    "BudgetView",
    "CreatedKey",
    "InvalidArgument",
    "KeyView",
    "ModelView",
    "UsageFormat",
    "UsageParameters",
    "UsageReport",
    "create_key",
    "create_principal",
    "delete_budget",
    "delete_rate_limit",
    "disable_tariff",
    "get_endpoint",
    "get_key",
    "get_model",
    "get_principal",
    "get_rate_limit",
    "list_budgets",
    "list_endpoints",
    "list_keys",
    "list_models",
    "list_principals",
    "list_rate_limits",
    "list_tariffs",
    "model_fits",
    "put_endpoint",
    "put_model",
    "revoke_key",
    "set_budget",
    "set_rate_limit",
    "set_tariff",
    "tariff_state",
    "upstream_key_state",
    "usage",
]
