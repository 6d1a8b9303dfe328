"""Lightning callbacks that difftrain adds to a run; each reads the module's `StepReport`."""
