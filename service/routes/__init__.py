"""One APIRouter per route group: inference, models/admin, health/metrics."""
