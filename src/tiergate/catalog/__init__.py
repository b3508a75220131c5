"""Model catalogue: what each model is (prices, limits, capabilities, parameter rules, sources)."""

from tiergate.catalog.catalog import Capabilities, Catalog, CatalogError, ModelInfo
from tiergate.catalog.shaping import (
    capability_error,
    check_capabilities,
    required_capabilities,
    shape_request,
)

__all__ = [
    "Capabilities", "Catalog", "CatalogError", "ModelInfo",
    "capability_error", "check_capabilities", "required_capabilities", "shape_request",
]
