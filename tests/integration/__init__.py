"""Integration and fault-injection tests against real services (PostgreSQL, MLflow server, multi-node Ray)."""
