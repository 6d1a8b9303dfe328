"""The command-line entry points: difftrain-train, -sample, -eval, -compare and -phema."""
