"""Pipeline stages: one module per stage, plain typed functions that know nothing of Prefect."""
