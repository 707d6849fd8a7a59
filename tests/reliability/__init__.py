"""The reliability harness: fault injection against real processes and databases."""
