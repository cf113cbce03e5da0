"""`audit`: what is wrong with a data set before training on it: duplicates and leaks across splits,
likely wrong labels, outliers. The command's work (`transferkit.commands.audit` only plans and calls
`run.run_audit`); every finding comes from one decode pass (the scan's fingerprints) and one frozen
feature pass."""
