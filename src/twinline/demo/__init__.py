"""`twinline demo`: the system, a call generator, a failure and its takeover, live."""
