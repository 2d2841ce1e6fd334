"""Running and reporting: params checks, notebook runner, multi-process launch, variants (a params file run and
evaluated), the claims ledger, the results report and plot helpers."""
