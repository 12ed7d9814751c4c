"""The fault-injection suite (issue 9): real Redis, API and worker processes, real faults."""
